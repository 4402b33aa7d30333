"""rayft's worker step on a GPU, without Ray: DeepSpeed ZeRO-2 in bf16 with LoRA, padded and packed, and the
peak memory of a step with activation checkpointing off and on."""

from __future__ import annotations

import statistics

import pytest
import torch

from rayft.config.schema import ExperimentConfig
from rayft.train.standalone import StepRunner, one_process_group
from tests.gpu.conftest import report

pytest.importorskip("deepspeed")


def _cfg(path: str, *, packing: bool, checkpointing: bool = False, max_length: int = 1024, batch_size: int = 16,
         dtype: str = "bfloat16") -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": {"name": path, "max_length": max_length, "dtype": dtype},
        "data": {"source": "chatterbot"}, "task": {"name": "sft"},
        "method": {"name": "lora", "r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"batch_size": batch_size, "lr": 2e-4, "packing": packing, "gradient_checkpointing": checkpointing},
        "scaling": {"zero_stage": 2, "gpus_per_worker": 1, "backend": "nccl"}, "tracking": {"wandb": False}})


@pytest.fixture(scope="module")
def nccl():
    with one_process_group("nccl"):
        yield


def _run(cfg, data, steps: int = 6):
    runner = StepRunner(cfg, data, steps)
    assert runner.engine.bfloat16_enabled() == (cfg.model.dtype == "bfloat16")
    assert next(runner.engine.module.parameters()).dtype == torch.bfloat16  # DeepSpeed cast the module
    out = runner.run(steps)
    del runner
    torch.cuda.empty_cache()
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in out)
    return out


def test_zero2_bf16_lora_step_padded_and_packed(nccl, chat_data):
    padded = _run(_cfg(chat_data.model_path, packing=False, batch_size=16), chat_data)
    packed = _run(_cfg(chat_data.model_path, packing=True, batch_size=2), chat_data)
    rate = {name: sum(s.tokens for s in steps[1:]) / sum(s.seconds for s in steps[1:])
            for name, steps in (("padded", padded), ("packed", packed))}
    report("zero2_bf16_lora", padded_tokens_per_s=round(rate["padded"]), packed_tokens_per_s=round(rate["packed"]),
           packed_over_padded=round(rate["packed"] / rate["padded"], 3),
           peak_mib_padded=round(statistics.median(s.peak_bytes for s in padded[1:]) / 2**20, 1),
           peak_mib_packed=round(statistics.median(s.peak_bytes for s in packed[1:]) / 2**20, 1))
    assert packed[-1].loss < packed[0].loss + 1.0  # it trains without blowing up
    assert statistics.mean(s.tokens for s in packed) > statistics.mean(s.tokens for s in padded) / 2


def test_checkpointing_lowers_the_peak_memory_of_a_step(nccl, chat_data):
    cases = {on: _run(_cfg(chat_data.model_path, packing=True, checkpointing=on, batch_size=8), chat_data, steps=4)
             for on in (False, True)}
    peak = {on: statistics.median(s.peak_bytes for s in steps[1:]) for on, steps in cases.items()}
    seconds = {on: statistics.mean(s.seconds for s in steps[1:]) for on, steps in cases.items()}
    report("checkpointing_1024x8", peak_mib_off=round(peak[False] / 2**20, 1), peak_mib_on=round(peak[True] / 2**20, 1),
           on_over_off=round(peak[True] / peak[False], 3), s_per_step_off=round(seconds[False], 3),
           s_per_step_on=round(seconds[True], 3),
           losses_off=[round(s.loss, 5) for s in cases[False]], losses_on=[round(s.loss, 5) for s in cases[True]])
    assert peak[True] <= 0.6 * peak[False]
    assert [s.loss for s in cases[True]] == pytest.approx([s.loss for s in cases[False]], abs=2e-2)  # bf16 noise
