"""PPO without Ray: GAE, whitening, the clipped losses and the KL controller against hand arithmetic; the value
head is trained but never saved; bad input is refused before training. (The reward rising is the 2-worker run of
tests/integration/tasks/test_task_runs.py.)"""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.errors import ConfigError
from rayft.rl.ppo import (VALUE_HEAD, adapt_kl, gae, masked_whiten, policy_outputs, ppo_losses, token_rewards,
                          value_head)
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config
from tests.support import tiny_tasks as tt

REWARD = "tests.support.rewards:target_word"


def _raw(tiny_llama, tmp_path, rewards=(REWARD,), method=None, **task):
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(24))
    raw = cls_config(tiny_llama, data, tmp_path, name="ppo", task={
        "name": "ppo", "rewards": [{"function": f} for f in rewards], "max_new_tokens": 6, **task})
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0}
    raw["method"] = method or {"name": "lora", "r": 8, "alpha": 16}
    return raw


def test_gae_is_the_discounted_sum_of_td_errors_over_the_completion():
    # one row: a prompt position, three completion tokens, one pad
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    rewards = torch.tensor([[9.0, 0.1, 0.2, 1.0, 9.0]])  # what lies outside the mask is ignored
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3, 9.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    d3 = 1.0 - 0.3  # the last token: no next value
    d2 = 0.2 + gamma * 0.3 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    assert torch.allclose(adv, torch.tensor([[0.0, a1, a2, a3, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0.0]]))
    # gamma = lam = 1 with zero values: the advantage is the reward still to come
    adv, _ = gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.0, 1.3, 1.2, 1.0, 0.0]]))


def test_the_score_lands_on_each_rows_last_token_beside_the_kl_penalty():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logps, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -1.5)
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, 0.5 * mask)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 1.95, 0.0], [-0.05, -0.05, -1.05]]))


def test_masked_whitening_and_the_kl_controller():
    values, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    white = masked_whiten(values, mask)
    kept = white[mask.bool()]
    assert kept.mean().abs() < 1e-6 and (kept.pow(2).mean() - 1).abs() < 1e-4 and white[0, 3] == 0
    assert adapt_kl(0.1, kl=12.0, target=None, horizon=100, batch=10) == 0.1  # fixed without a target
    assert adapt_kl(0.1, kl=12.0, target=6.0, horizon=100, batch=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert adapt_kl(0.1, kl=3.0, target=6.0, horizon=100, batch=10) == pytest.approx(0.1 * (1 - 0.2 * 0.1))


def test_the_clipped_policy_and_value_losses():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logps = torch.log(torch.tensor([[1.5, 0.9]])).requires_grad_()  # ratios 1.5 (clipped at 1.2) and 0.9
    adv = torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[1.0, 0.0]], requires_grad=True)
    old_values, returns = torch.zeros(1, 2), torch.tensor([[2.0, 0.0]])
    policy, value, figures = ppo_losses(logps, values, old, old_values, adv, returns, mask, 0.2, 0.5)
    assert policy.item() == pytest.approx(-(1.2 + 0.9) / 2)  # max(-A r, -A clip(r)) per token
    assert value.item() == pytest.approx(0.5 * (max((1 - 2) ** 2, (0.5 - 2) ** 2) + 0) / 2)
    assert figures["clip_fraction"] == 0.5 and figures["value_clip_fraction"] == 0.5
    policy.backward()
    assert logps.grad[0, 0] == 0 and logps.grad[0, 1] != 0  # the clipped token gives no gradient


def test_the_value_head_trains_but_is_left_out_of_the_saved_result(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    cfg = build_config(_raw(tiny_llama, tmp_path, rewards=("tests.support.rewards:text_length",), ppo_epochs=2,
                            num_minibatches=2))
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    model = E.build_model(recipe, data)
    assert recipe.task.updates_per_batch(recipe.task_params) == 4
    head = value_head(model)
    assert all(p.requires_grad for p in head.parameters()) and float(head.kl_coef) == pytest.approx(0.05)
    assert not any(m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))  # dropout off
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = list(_train(recipe, model, recipe.task.collate(rows, data.pad_id), optimizer))
    assert len(losses) == 4 and head.summary.weight.abs().sum() > 0  # the value head learned something
    figures = recipe.task.step_figures(model)
    assert figures.keys() >= {"reward", "reward_std", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss",
                              "policy_loss", "approx_kl", "completion_length", "rollout_s", "update_s"}
    with recipe.task.saving(model):
        model.save_pretrained(tmp_path / "out")
    assert VALUE_HEAD in dict(model.named_children())  # back after saving
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert saved and not any(VALUE_HEAD in k for k in saved)


def _train(recipe, model, batch, optimizer):
    for loss in recipe.task.losses(model, batch, recipe.task_params):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield loss.item()


def test_the_first_update_starts_at_ratio_one(tiny_llama, tmp_path):
    """Dropout is off, so the policy's log-probabilities before the first update equal the rollout's: nothing is
    clipped and the approximate KL to the sampling policy is 0."""
    cfg = build_config(_raw(tiny_llama, tmp_path, ppo_epochs=1))
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    model = E.build_model(recipe, data)
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
    loss = E.train_loss(model, recipe, recipe.task.collate(rows, data.pad_id))
    assert torch.isfinite(loss)
    batch = {"input_ids": torch.tensor([[1, 5, 6, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 6, 7]])}
    with torch.no_grad():
        a, va, _ = policy_outputs(model, batch)
        b, vb, _ = policy_outputs(model, batch)
    assert torch.equal(a, b) and torch.equal(va, vb)


@pytest.mark.parametrize("function,says", [
    ("no_such_module_here:f", "cannot be imported"),
    ("tests.support.rewards:raises", "RuntimeError: this reward is broken"),
    ("tests.support.rewards:wrong_shape", "returned 2 values for 1 completions"),
])
def test_bad_reward_functions_are_config_errors_before_training(tiny_llama, tmp_path, function, says):
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(_raw(tiny_llama, tmp_path, rewards=(REWARD, function))))
    (error,) = err.value.errors
    assert error.path == "task.rewards[1].function" and says in error.expected


def test_more_minibatches_than_prompts_in_a_batch_is_refused(tiny_llama, tmp_path):
    raw = _raw(tiny_llama, tmp_path, num_minibatches=16)
    raw["train"]["batch_size"] = 4
    with pytest.raises(ConfigError) as err:
        prepare_data(build_config(raw))
    (error,) = err.value.errors
    assert error.path == "task.num_minibatches" and "at most train.batch_size (4)" in error.expected


def test_a_relative_reward_model_store_is_settled_where_the_config_is_read(tiny_llama, tmp_path, monkeypatch):
    """Workers run in another folder: the dumped config they get names the store the driver checked."""
    from rayft.config.loader import dump_config
    from rayft.config.schema import ExperimentConfig

    monkeypatch.chdir(tmp_path)
    raw = _raw(tiny_llama, tmp_path, reward_model={"id": "rm", "store": "my-store"})
    dumped = dump_config(build_config(raw))
    assert dumped["task"]["reward_model"]["store"] == str(tmp_path / "my-store")
    monkeypatch.chdir("/")
    again = ExperimentConfig.model_validate(dumped).task.params()["reward_model"]
    assert again["store"] == str(tmp_path / "my-store")
