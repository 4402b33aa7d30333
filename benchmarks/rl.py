"""RL rollouts inside a training worker: batched decoding against one sequence at a time, and where a step goes.

On ``smollm2-135m`` with a LoRA policy (as a GRPO worker holds it) and real prompts (chatterbot's questions, rendered
with the model's chat template), this measures in one process:

- ``batched``: every prompt's ``G`` completions decoded as one continuous batch (:func:`rayft.rl.rollouts.rollout`,
  what the ``grpo`` task does each step);
- ``one_at_a_time``: the same completions, one sequence after another on the same engine;
- one GRPO step and one PPO rollout batch taken by the tasks themselves (rollout, reward, log-probs of policy and
  reference, values, GAE, then every update: PPO's 4 epochs), split into generating and updating.

Sampling is seeded and the end-of-sequence token is honoured, so both modes decode the same tokens; tokens/s
counts the completion tokens. Prints JSON with the ratio (goal: batched >= 4x one at a time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_common import load  # noqa: E402


def rollouts(model, tok, prompts: list[list[int]], group: int, new: int, together: bool) -> tuple[int, float]:
    from rayft.generate.params import SamplingParams
    from rayft.rl.rollouts import rollout

    params = SamplingParams(max_tokens=new, temperature=1.0, seed=0, n=group)
    start = time.perf_counter()
    if together:
        groups = rollout(model, tok, prompts, params)
    else:
        one = dataclasses.replace(params, n=1)
        groups = [[rollout(model, tok, [p], dataclasses.replace(one, seed=i))[0][0] for i in range(group)]
                  for p in prompts]
    seconds = time.perf_counter() - start
    return sum(len(c) for g in groups for c in g), seconds


def rl_step(name: str, prompts: list[str], group: int, new: int, task: str) -> dict:
    """One training batch of the ``grpo`` or ``ppo`` task on a LoRA policy, taken as the worker loop takes it
    (every loss the task yields, each with its backward and optimizer step): generating against the whole batch.
    GRPO samples ``group`` completions of each prompt; PPO one of each of ``group`` times as many prompts (the
    same number of completions)."""
    import tempfile

    from rayft.config import build_config
    from rayft.data import prepare_data
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    rows_in_batch = len(prompts) * (group if task == "ppo" else 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts * (group + 4)))
        reward = Path(tmp) / "bench_rewards.py"
        reward.write_text("def length(prompts, completions, **kw):\n    return [len(c) / 100 for c in completions]\n")
        sys.path.insert(0, tmp)
        own = {"group_size": group} if task == "grpo" else {"ppo_epochs": 4, "num_minibatches": 1}
        cfg = build_config({
            "name": "rl-bench", "output_dir": tmp, "model": {"name": name, "max_length": 256},
            "data": {"source": str(data), "validation_size": 2, "test_size": 0},
            "task": {"name": task, "rewards": [{"function": "bench_rewards:length"}], "max_new_tokens": new, **own},
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"batch_size": rows_in_batch}, "tracking": {"wandb": False}})
        recipe = Recipe.of(cfg)
        prepared = prepare_data(cfg)
        model = E.build_model(recipe, prepared)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        rows = [{k: v[i] for k, v in prepared.splits["train"].items()} | {"index": i} for i in range(rows_in_batch)]
        batch = recipe.task.collate(rows, prepared.pad_id)
        start = time.perf_counter()
        updates = 0
        for loss in recipe.task.losses(model, batch, recipe.task_params):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
        step = time.perf_counter() - start
        figures = recipe.task.step_figures(model)
    return {"task": task, "completions": len(prompts) * group, "updates": updates, "step_s": round(step, 2),
            "generating_s": round(figures["rollout_s"], 2), "updating_s": round(step - figures["rollout_s"], 2),
            "generating_share": round(figures["rollout_s"] / step, 3)}


def base_reward(config: str) -> dict:
    """The held-out (test split) reward of the untrained policy, scored as the grpo/ppo task scores a trained run's
    ``test_reward`` (greedy answers, the config's reward): the baseline that run is compared with."""
    from rayft.config import load_config
    from rayft.data import prepare_data
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    cfg = load_config(config)
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    model = E.build_model(recipe, data).eval()  # LoRA's B starts at zero: the base model's answers
    split = data.splits["test"]
    rows = [{k: v[i] for k, v in split.items()} | {"index": i} for i in range(len(split["input_ids"]))]
    start = time.perf_counter()
    parts = [recipe.task.eval_batch(model, recipe.task.collate(rows[i:i + 16], data.pad_id))
             for i in range(0, len(rows), 16)]
    return {"config": config, "test_rows": len(rows), **recipe.task.finish_eval(parts),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-reward", metavar="CONFIG",
                        help="only score the untrained policy of a grpo or ppo experiment on its test split")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.base_reward:
        print(json.dumps(base_reward(args.base_reward), indent=1))
        return
    from peft import LoraConfig, get_peft_model

    from rayft.data.sources import load_source
    from rayft.tasks.prompt_format import PromptFormat

    name, model, tok = load(args.model)
    policy = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    texts = [str(p) for p in load_source("chatterbot")["prompt"].drop_duplicates().head(args.prompts)]
    fmt = PromptFormat.of_tokenizer(tok)
    prompts = [fmt.render_chat(tok, [{"role": "user", "content": t}]) for t in texts]
    policy.train()
    rollouts(policy, tok, prompts[:1], 1, 4, True)  # warm-up
    batched_tokens, batched_s = rollouts(policy, tok, prompts, args.group, args.new_tokens, True)
    single_tokens, single_s = rollouts(policy, tok, prompts, args.group, args.new_tokens, False)
    report = {
        "setup": {"model": name, "prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens,
                  "threads": args.threads, "prompt_tokens": [len(p) for p in prompts]},
        "batched": {"tokens": batched_tokens, "seconds": round(batched_s, 2),
                    "tokens_per_s": round(batched_tokens / batched_s, 1)},
        "one_at_a_time": {"tokens": single_tokens, "seconds": round(single_s, 2),
                          "tokens_per_s": round(single_tokens / single_s, 1)},
        "grpo_step": rl_step(args.model, texts, args.group, args.new_tokens, "grpo"),
        "ppo_step": rl_step(args.model, texts, args.group, args.new_tokens, "ppo"),
    }
    report["ratios"] = {"batched_over_one_at_a_time": round(report["batched"]["tokens_per_s"]
                                                            / report["one_at_a_time"]["tokens_per_s"], 2)}
    report["goals"] = {"batched_over_one_at_a_time_min_4": report["ratios"]["batched_over_one_at_a_time"] >= 4}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
