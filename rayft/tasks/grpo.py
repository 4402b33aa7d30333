"""Group relative policy optimisation (GRPO) on a causal LM against reward functions.

Rewards come from functions (``task.rewards``) and/or a stored ``reward_model`` (``task.reward_model``), weighted.
Rows hold a ``prompt`` (rendered as ``sft`` renders a user turn, through the model's :class:`PromptFormat`) and any
other columns, which reach the reward functions by name (TRL's convention). Each training step samples
``group_size`` completions of every prompt of the batch on the decode engine (:func:`rayft.rl.grpo.rollout`, inside
the worker, not over HTTP), scores them with the weighted reward functions of ``task.rewards`` and takes one policy
step on GRPO's clipped surrogate with a KL penalty to the reference (the base with its adapters disabled, or a frozen
copy for full-weight methods, as DPO holds it). Evaluation decodes one greedy completion per held-out prompt and
reports its mean reward (``eval_reward``, the default metric: higher is better) and length.

The reward functions are resolved and called on the first row before training starts (when the data is prepared),
so a missing, failing or wrongly shaped one is a config error, not a crash in a worker.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import pandas as pd
import torch
from pydantic import Field

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import pad_batch
from rayft.errors import ConfigError, FieldError
from rayft.rl.rewards import RewardModelSpec, RewardSpec, Rewards, check_reward_model, load_rewards
from rayft.tasks.base import Task, TaskParams, register_task, task_params
from rayft.tasks.dpo import hold_reference
from rayft.tasks.prompt_format import PromptFormat
from rayft.tasks.sft import causal_lm

PARAMS_ATTR = "_rayft_grpo_params"
FIGURES_ATTR = "_rayft_grpo_figures"  # what the last step measured, for the loop's train_* report


class GRPOParams(TaskParams):
    rewards: list[RewardSpec] = Field(default_factory=list, description="reward functions (module:function), "
                                                                        "weighted")
    reward_model: RewardModelSpec | None = Field(None, description="a stored reward_model whose score is a reward")
    group_size: int = Field(4, ge=2, le=64, description="completions sampled per prompt (G)")
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0, le=2.0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    beta: float = Field(0.04, ge=0, description="weight of the KL penalty to the reference")
    epsilon: float = Field(0.2, gt=0, lt=1, description="clip range of the policy ratio")


@lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from rayft.models import load_tokenizer

    return load_tokenizer(path)


@lru_cache(maxsize=8)
def _rewards(specs: tuple[RewardSpec, ...], reward_model: RewardModelSpec | None) -> Rewards:
    return load_rewards(list(specs), reward_model=reward_model)


class GRPO(Task):
    name = "grpo"
    peft_task_type = "CAUSAL_LM"
    metrics = ("reward", "completion_length")
    default_metric = "eval_reward"
    default_mode = "max"
    roles = {"prompt": "prompt_column"}
    default_columns = {"prompt": "prompt"}
    params = GRPOParams
    serves_as = "sft"  # a GRPO-tuned model completes text like an SFT one

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        """Prompt ids plus each row's prompt text and other columns (for the reward functions), after checking
        the reward functions on the first row."""
        params = task_params(self, cfg)
        fmt = PromptFormat.of_training(tokenizer, cfg)
        prompt_col = columns["prompt"]
        others = [c for c in df.columns if c != prompt_col]
        rows = df.to_dict("records")
        if not params.rewards and params.reward_model is None:
            raise ConfigError([FieldError("task.rewards", [], "reward functions ([{function: module:function}]) "
                                          "or a stored reward model (task.reward_model: {id: ...}), or both")])
        if params.reward_model is not None:
            check_reward_model(params.reward_model)
        if rows:
            first = rows[0]
            load_rewards(params.rewards, (str(first[prompt_col]), "", {c: first[c] for c in others}))
        out: dict[str, list[Any]] = {"input_ids": [], "prompt": [], "columns": []}
        limit = cfg.model.max_length
        for row in rows:
            ids = fmt.render_chat(tokenizer, [{"role": "user", "content": str(row[prompt_col])}])
            if len(ids) >= limit:
                continue  # no room left for a completion
            out["input_ids"].append(ids)
            out["prompt"].append(str(row[prompt_col]))
            out["columns"].append({c: row[c] for c in others})
        return out

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        batch: dict[str, Any] = pad_batch([{k: f[k] for k in ("input_ids", "index") if k in f} for f in features],
                                          pad_id)
        batch["prompt"] = [f["prompt"] for f in features]
        batch["columns"] = [f["columns"] for f in features]
        return batch

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        return causal_lm(path)

    def prepare_model(self, model: torch.nn.Module, params: GRPOParams) -> torch.nn.Module:
        """A frozen reference when the model cannot switch its adapters off (and the KL penalty is on)."""
        if params.beta > 0:
            hold_reference(model)
        model.__dict__[PARAMS_ATTR] = params  # evaluation samples with the run's settings
        return model

    def compute_loss(self, model: Any, batch: dict[str, Any], params: GRPOParams) -> torch.Tensor:
        from rayft.generate.params import SamplingParams
        from rayft.rl.grpo import group_advantages, grpo_loss, rollout, sequences, token_logps
        from rayft.tasks.dpo import reference_logps_of

        inner = getattr(model, "module", model)
        tok = _tokenizer(inner.config._name_or_path)
        prompts = _prompt_ids(batch)
        g = params.group_size
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  top_p=params.top_p, n=g)
        started = time.perf_counter()
        groups = rollout(inner, tok, prompts, sampling)
        rollout_s = time.perf_counter() - started
        completions = [c for group in groups for c in group]
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        rewards = _score(params, batch, texts, g)
        advantages = group_advantages(torch.tensor(rewards).view(len(prompts), g)).flatten()
        seqs = sequences([p for p in prompts for _ in range(g)], completions, tok.pad_token_id or 0)
        seqs = {k: v.to(batch["input_ids"].device) for k, v in seqs.items()}
        logps, mask = token_logps(model, seqs)
        ref = reference_logps_of(model, seqs, lambda m, b: token_logps(m, b)[0]) if params.beta > 0 else None
        loss, figures = grpo_loss(logps, logps.detach(), ref, advantages.to(logps.device), mask, params.epsilon,
                                  params.beta)
        scores = torch.tensor(rewards)
        inner.__dict__[FIGURES_ATTR] = {
            **figures, "reward": float(scores.mean()), "reward_std": float(scores.std(unbiased=False)),
            "completion_length": sum(map(len, completions)) / len(completions), "rollout_s": rollout_s,
            "rollout_tokens_per_s": sum(map(len, completions)) / max(rollout_s, 1e-9)}
        return loss

    def step_figures(self, model: Any) -> dict[str, float]:
        return getattr(model, "module", model).__dict__.pop(FIGURES_ATTR, {})

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        from rayft.generate.params import SamplingParams
        from rayft.rl.grpo import rollout

        inner = getattr(model, "module", model)
        params = inner.__dict__.get(PARAMS_ATTR)
        tok = _tokenizer(inner.config._name_or_path)
        greedy = SamplingParams(max_tokens=params.max_new_tokens, temperature=0)
        completions = [group[0] for group in rollout(inner, tok, _prompt_ids(batch), greedy)]
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        return {"index": batch["index"].tolist(), "reward": _score(params, batch, texts, 1),
                "length": [len(c) for c in completions]}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        seen = {i: (r, n) for p in parts for i, r, n in zip(p["index"], p["reward"], p["length"])}
        count = max(len(seen), 1)
        return {"reward": sum(v[0] for v in seen.values()) / count,
                "completion_length": sum(v[1] for v in seen.values()) / count}


def _prompt_ids(batch: dict[str, Any]) -> list[list[int]]:
    """Each row's prompt ids without the padding ``pad_batch`` added."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]


def _score(params: GRPOParams, batch: dict[str, Any], texts: list[str], g: int) -> list[float]:
    """The weighted reward of every completion (``g`` per prompt, in prompt order)."""
    prompts = [p for p in batch["prompt"] for _ in range(g)]
    rows = [c for c in batch["columns"] for _ in range(g)]
    columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}
    try:
        return _rewards(tuple(params.rewards), params.reward_model).score(prompts, texts, columns)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code failing mid-training: say which and why
        raise ConfigError([FieldError("task.rewards", [r.function for r in params.rewards],
                                      f"reward functions that score every completion ({type(exc).__name__}: "
                                      f"{exc})")]) from None


TASK = register_task(GRPO())
