"""Activation checkpointing (``train.gradient_checkpointing``): the same gradients as without it, with LoRA and
full fine-tuning, and the same training under DeepSpeed at every ZeRO stage."""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from rayft.train.standalone import StepRunner
from tests.support import sft_config


def _cfg(tiny_llama, chat_jsonl, tmp_path, method: dict, checkpointing: bool, stage: int = 0, packing=False):
    return build_config(sft_config(tiny_llama, chat_jsonl, tmp_path, method,
                                   train={"gradient_checkpointing": checkpointing, "packing": packing,
                                          "batch_size": 4, "lr": 1e-2, "max_grad_norm": 0.0},
                                   scaling={"zero_stage": stage}))


LORA = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
FULL = {"name": "full"}


@pytest.fixture(scope="module")
def data(tiny_llama, chat_jsonl, tmp_path_factory):
    return prepare_data(_cfg(tiny_llama, chat_jsonl, tmp_path_factory.mktemp("ck"), LORA, False))


def _grads(cfg, data) -> dict[str, torch.Tensor]:
    recipe = Recipe.of(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data)
    batch = next(iter(E.make_loader(data.splits["train"], recipe, data.pad_id, 0, 1, train=True)))
    recipe.task.compute_loss(model, batch, recipe.task_params).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", [LORA, FULL], ids=["lora", "full"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_checkpointing_gives_the_same_gradients(method, packing, data, tiny_llama, chat_jsonl, tmp_path):
    plain = _grads(_cfg(tiny_llama, chat_jsonl, tmp_path, method, False, packing=packing), data)
    recomputed = _grads(_cfg(tiny_llama, chat_jsonl, tmp_path, method, True, packing=packing), data)
    assert plain.keys() == recomputed.keys() and plain
    assert sum(float(g.abs().sum()) for g in plain.values()) > 0  # (LoRA's A gets none while B is still zero)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5)


def _losses(cfg, data, steps: int = 3) -> list[float]:
    return [step.loss for step in StepRunner(cfg, data, steps).run(steps)]


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.slow), 2,
                                   pytest.param(3, marks=pytest.mark.slow)])
def test_checkpointing_trains_the_same_at_every_zero_stage(stage, process_group, data, tiny_llama, chat_jsonl,
                                                            tmp_path):
    plain = _losses(_cfg(tiny_llama, chat_jsonl, tmp_path, LORA, False, stage, packing=True), data)
    recomputed = _losses(_cfg(tiny_llama, chat_jsonl, tmp_path, LORA, True, stage, packing=True), data)
    assert plain[-1] < plain[0]  # it trains
    assert recomputed == pytest.approx(plain, abs=1e-5)
