"""Packing for the online RL tasks' update forwards (``train.packing`` with grpo/ppo): rollout rows packed several
to a row give the same per-token log-probabilities, values and entropies as padded, attention never crosses rows,
and one GRPO and PPO step computes the same loss and gradients either way."""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.data.packing import PACK_UPDATES, pack_rows
from rayft.rl.ppo import policy_outputs
from rayft.rl.rollouts import completion_outputs, sequences
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config
from tests.support import tiny_tasks as tt

PROMPTS = [[1, 5], [1, 9, 10, 11, 12], [1, 4], [1, 12, 13]]
COMPLETIONS = [[20], [22, 23, 24], [28, 29], [29, 30]]  # rows of 3, 8, 4 and 5 tokens


def _raw(tiny_llama, tmp_path, task: str, **extra):
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(24))
    raw = cls_config(tiny_llama, data, tmp_path, name=task, task={
        "name": task, "rewards": [{"function": "tests.support.rewards:text_length"}], "max_new_tokens": 6, **extra},
        train={"packing": True})
    raw["data"] = {"source": str(data), "validation_size": 8, "test_size": 0}
    raw["method"] = {"name": "lora", "r": 8, "alpha": 16}
    return raw


def test_rows_pack_best_fit_into_rows_no_wider_than_the_longest_and_unpack_in_place():
    seqs = sequences(PROMPTS, COMPLETIONS, pad_id=0)
    rows = pack_rows(seqs["input_ids"], seqs["attention_mask"])
    width = seqs["input_ids"].size(1)
    # best fit, longest first: 8 | 5 + 3 | 4
    assert rows.input_ids.shape == (3, 8) and width == 8
    assert [sorted({int(s) // width for s in r if s >= 0}) for r in rows.source] == [[1], [0, 3], [2]]
    assert int((rows.source >= 0).sum()) == int(seqs["attention_mask"].sum())  # every token once
    torch.testing.assert_close(rows.unpack(rows.input_ids), seqs["input_ids"] * seqs["attention_mask"])
    assert rows.position_ids[1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # restarting with each sequence


def test_two_short_rows_share_a_packed_row():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0], [9, 10, 11, 0, 0, 0]])
    rows = pack_rows(ids, (ids > 0).long())
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [9, 10, 11, 7, 8, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    torch.testing.assert_close(rows.unpack(rows.input_ids), ids)


def test_left_padded_rows_are_refused():
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(ids, (ids > 0).long())


@pytest.mark.parametrize("task", ["grpo", "ppo"])
def test_packed_outputs_equal_the_padded_ones(tiny_llama, tmp_path, task):
    cfg = build_config(_raw(tiny_llama, tmp_path, task))
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data).eval()
    seqs = sequences(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        padded = completion_outputs(model, seqs, values=task == "ppo", entropy=True)
        packed = completion_outputs(model, seqs, packed=True, values=task == "ppo", entropy=True)
    assert packed.slots < padded.slots  # 3 rows of 8 against 4
    torch.testing.assert_close(packed.mask, padded.mask)
    for name in ("logps", "entropy") + (("values",) if task == "ppo" else ()):
        torch.testing.assert_close(getattr(packed, name), getattr(padded, name), atol=1e-5, rtol=1e-5)
    assert padded.logps.abs().sum() > 0


@pytest.mark.parametrize("task,extra", [("grpo", {"group_size": 2, "beta": 0.1}),
                                        ("ppo", {"ppo_epochs": 1, "num_minibatches": 1})])
def test_a_step_computes_the_same_loss_and_gradients_packed_or_padded(tiny_llama, tmp_path, task, extra):
    """The same seed samples the same rollouts, so the packed update's loss and gradients are the padded ones."""
    cfg = build_config(_raw(tiny_llama, tmp_path, task, **extra))
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data)
    rows = [{k: v[i] for k, v in data.splits["train"].items()} | {"index": i} for i in range(4)]
    results = {}
    for packed in (False, True):
        batch = recipe.task.collate_packed(rows, data.pad_id) if packed else recipe.task.collate(rows, data.pad_id)
        assert bool(batch.get(PACK_UPDATES)) == packed
        model.zero_grad()
        torch.manual_seed(1)
        [loss] = list(recipe.task.losses(model, batch, recipe.task_params))  # one update: its figures recorded
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[packed] = loss.detach(), grads, recipe.task.step_figures(model)
    (loss, grads, figures), (packed_loss, packed_grads, packed_figures) = results[False], results[True]
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == packed_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4)
    assert figures["reward"] == packed_figures["reward"]  # the same completions


def test_prompt_learning_methods_cannot_pack_rl_updates(tiny_llama, tmp_path):
    from rayft.errors import ConfigError

    raw = _raw(tiny_llama, tmp_path, "grpo")
    raw["method"] = {"name": "prompt", "num_virtual_tokens": 4}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert "train.packing" in str(err.value)


def test_policy_outputs_packed_keeps_its_shapes(tiny_llama, tmp_path):
    cfg = build_config(_raw(tiny_llama, tmp_path, "ppo"))
    recipe, data = Recipe.of(cfg), prepare_data(cfg)
    model = E.build_model(recipe, data).eval()
    seqs = sequences(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        logps, values, entropy = policy_outputs(model, seqs, packed=True)
    assert logps.shape == values.shape == (4, seqs["input_ids"].size(1) - 1) and entropy is None
