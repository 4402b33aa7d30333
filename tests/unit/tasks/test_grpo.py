"""GRPO without Ray: reward functions checked before training, the loss's arithmetic, and a reward that rises."""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.errors import ConfigError
from rayft.rl.grpo import group_advantages, grpo_loss
from rayft.rl.rollouts import rollout
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config
from tests.support import tiny_tasks as tt

REWARD = "tests.support.rewards:target_word"


def _raw(tiny_llama, tmp_path, rewards=(REWARD,), **task):
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(24))
    raw = cls_config(tiny_llama, data, tmp_path, name="grpo", task={
        "name": "grpo", "rewards": [{"function": f} for f in rewards], "group_size": 8, "max_new_tokens": 6,
        "beta": 0.0, **task})
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0}
    raw["method"] = {"name": "lora", "r": 8, "alpha": 16}
    return raw


@pytest.mark.parametrize("function,says", [
    ("no_such_module_here:f", "cannot be imported"),
    ("tests.support.rewards:missing", "has no function 'missing'"),
    ("tests.support.rewards:raises", "RuntimeError: this reward is broken"),
    ("tests.support.rewards:wrong_shape", "returned 2 values for 1 completions"),
    ("tests.support.rewards:not_numbers", "'good', not a number"),
])
def test_bad_reward_functions_are_config_errors_before_training(tiny_llama, tmp_path, function, says):
    raw = _raw(tiny_llama, tmp_path, rewards=(REWARD, function))
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(raw))
    (error,) = err.value.errors
    assert error.path == "task.rewards[1].function" and error.value == function and says in error.expected


def test_a_reward_reads_the_rows_other_columns(tiny_llama, tmp_path):
    data = prepare_data(build_config(_raw(tiny_llama, tmp_path, rewards=("tests.support.rewards:says_answer",))))
    assert data.splits["train"]["columns"][0].keys() == {"answer"}


def test_group_advantages_and_the_clipped_loss():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3) and torch.all(adv[1] == 0)
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, figures = grpo_loss(logps, logps.detach(), None, advantages, mask, 0.2, 0.0)
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)  # -A per token, averaged per completion, then over them
    loss.backward()  # the gradient of each token is -A / |completion| / completions
    assert torch.allclose(logps.grad, torch.tensor([[-0.25, -0.25, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    ref = logps.detach() - 0.1
    _, figures = grpo_loss(logps, logps.detach(), ref, advantages, mask, 0.2, 0.5)
    assert figures["kl"] == pytest.approx(float(torch.exp(torch.tensor(-0.1)) + 0.1 - 1), rel=1e-4)


def test_rollouts_are_grouped_and_end_with_eos_when_the_model_stops(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft.generate.params import SamplingParams

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = [tok("the movie")["input_ids"], tok("what is the capital")["input_ids"]]
    groups = rollout(model, tok, prompts, SamplingParams(max_tokens=5, temperature=1.0, n=3, seed=0))
    assert [len(g) for g in groups] == [3, 3] and model.training  # training mode is back
    for group in groups:
        for c in group:
            assert 1 <= len(c) <= 6 and (len(c) <= 5 or c[-1] == tok.eos_token_id)


def test_grpo_raises_the_reward_of_saying_the_target_word(tiny_llama, tmp_path):
    """On the tiny Llama with LoRA, 25 GRPO steps (8 samples of 4 prompts each) make the policy say 'paris' far
    more often than the base does."""
    cfg = build_config(_raw(tiny_llama, tmp_path, beta=0.02))
    recipe = Recipe.of(cfg)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
    batch = recipe.task.collate(rows, data.pad_id)

    def held_out_reward() -> float:
        model.eval()
        val = [{k: v[i] for k, v in data.splits["validation"].items()} | {"index": i} for i in range(8)]
        with torch.no_grad():
            part = recipe.task.eval_batch(model, recipe.task.collate(val, data.pad_id))
        return recipe.task.finish_eval([part])["reward"]

    before = held_out_reward()
    model.train()
    for _ in range(25):
        loss = E.train_loss(model, recipe, batch)
        assert torch.isfinite(loss)
        figures = recipe.task.step_figures(model)
        assert figures.keys() >= {"reward", "reward_std", "kl", "clip_fraction", "completion_length", "rollout_s"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_reward()
    assert after >= before + 0.3, (before, after)


@pytest.fixture()
def rm_store(tmp_path, tiny_bert, tiny_llama, sentiment_csv):
    """A store with a reward model (tiny BERT, scalar head), an sft result, and a reward model of other weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from rayft.store import AdapterStore
    from tests.support.serve_helpers import config, manifest, sft_adapter

    store = AdapterStore(tmp_path / "store")
    torch.manual_seed(0)
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1)
    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], init_lora_weights=False)
    get_peft_model(scorer, lora).save_pretrained(tmp_path / "rm")
    rm_cfg = config(cls_config(tiny_bert, sentiment_csv, tmp_path, task={"name": "reward_model"}))
    store.put(tmp_path / "rm", manifest("rm", tiny_bert, "reward_model", rm_cfg))
    store.put(tmp_path / "rm", manifest("rm-elsewhere", tiny_bert, "reward_model", rm_cfg, base_fingerprint="0" * 16))
    sft_cfg = config(cls_config(tiny_llama, sentiment_csv, tmp_path, task={"name": "sft"}))
    store.put(sft_adapter(tiny_llama, tmp_path / "chat"), manifest("chat", tiny_llama, "sft", sft_cfg))
    return store


@pytest.mark.parametrize("model_id,says", [
    ("nope", "the id of a stored result; reward models in"),
    ("chat", "a result of task 'reward_model', not 'sft'"),
    ("rm-elsewhere", "trained on weights 0000000000000000"),
])
def test_a_reward_model_that_cannot_score_is_refused_before_training(tiny_llama, tmp_path, rm_store, model_id, says):
    raw = _raw(tiny_llama, tmp_path, rewards=(), reward_model={"id": model_id, "store": str(rm_store.root)})
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(raw))
    (error,) = err.value.errors
    assert error.path == "task.reward_model.id" and says in error.expected
    if model_id != "rm-elsewhere":
        assert "rm, rm-elsewhere" in error.expected  # the ones that are reward models


def test_a_stored_reward_model_scores_the_rollouts(tiny_llama, tmp_path, rm_store):
    raw = _raw(tiny_llama, tmp_path, rewards=(REWARD,), reward_model={"id": "rm", "store": str(rm_store.root),
                                                                      "weight": 0.5})
    cfg = build_config(raw)
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    model = E.build_model(recipe, data)
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(2)]
    loss = E.train_loss(model, recipe, recipe.task.collate(rows, data.pad_id))
    figures = recipe.task.step_figures(model)
    assert torch.isfinite(loss) and figures["reward_std"] > 0  # the scalar head's scores differ per completion


def test_no_reward_at_all_is_a_config_error(tiny_llama, tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(_raw(tiny_llama, tmp_path, rewards=())))
    assert "reward functions" in str(err.value) and "reward_model" in str(err.value)


def test_shipped_reward_functions_and_the_keyword_prompts():
    from rayft.data.sources import load_source
    from rayft.rl.library import length_target, uses_keyword

    assert uses_keyword(["q"] * 3, ["I love Food.", "foodie", "no"], ["food"] * 3) == [1.0, 0.0, 0.0]
    assert length_target(["q"] * 3, ["a b c", "a", "a b c d e f"], [3, 3, 3]) == [1.0, pytest.approx(1 / 3), 0.0]
    rows = load_source("chatterbot_keywords")
    assert len(rows) > 500 and set(rows.columns) == {"prompt", "keyword"}
    first = rows.iloc[0]
    assert f'uses the word "{first["keyword"]}"' in first["prompt"]
