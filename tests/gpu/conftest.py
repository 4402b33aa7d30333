"""The GPU checks: rayft's worker step and generation code driven directly (the GPU machine has no Ray).

Skipped on machines without CUDA. On a GPU machine: ``pytest -m gpu tests/gpu -s`` (``-s`` shows the figures; with
``RAYFT_GPU_REPORT=<file>`` they are also written there as JSON lines). The training checks need ``deepspeed``
there (no op is built: a torch optimizer is the client optimizer) and, for packing, ``trl`` with ``datasets``.

The model is ``smollm2-135m`` from rayft's catalog where its package is installed, else a model of SmolLM2-135M's
exact shape with random weights (throughput and memory depend on the shape, not on the weights).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from rayft.data.collate import IGNORE_INDEX
from rayft.data.prepare import PreparedData

SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def llm_path(tmp_path_factory) -> str:
    """smollm2-135m from the catalog, or a random model of its shape (with the tiny test tokenizer)."""
    try:
        from rayft.models import resolve_model

        return resolve_model("smollm2-135m")
    except Exception:  # noqa: BLE001  (the catalog package is missing on this machine)
        from transformers import LlamaConfig, LlamaForCausalLM

        from tests.support import tiny

        path = tiny.make_llama(tmp_path_factory.mktemp("models") / "smollm2-shape")
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE)).save_pretrained(path)
        return str(path)


@pytest.fixture(scope="session")
def chat_data(llm_path) -> PreparedData:
    """Tokenized SFT rows shaped like the chatterbot catalog data (a prompt then a response, 20-160 tokens, mean
    about 55), 600 for training and 64 for validation."""
    rng = random.Random(0)

    def rows(n: int) -> dict[str, list]:
        ids, labels = [], []
        for _ in range(n):
            length = min(160, max(20, int(rng.expovariate(1 / 35)) + 20))
            prompt = length // 2
            row = [rng.randrange(10, 40000) for _ in range(length)]
            ids.append(row)
            labels.append([IGNORE_INDEX] * prompt + row[prompt:])
        return {"input_ids": ids, "labels": labels}

    splits = {"train": rows(600), "validation": rows(64)}
    return PreparedData(model_path=llm_path, labels=None, columns={}, splits=splits,
                        raw_sizes={k: len(v["input_ids"]) for k, v in splits.items()}, pad_id=2)


def report(name: str, **figures) -> None:
    """Print a check's figures (and append them to $RAYFT_GPU_REPORT as a JSON line)."""
    line = json.dumps({"check": name, "device": torch.cuda.get_device_name(0), **figures})
    print(line)
    target = os.environ.get("RAYFT_GPU_REPORT")
    if target:
        with Path(target).open("a") as fh:
            fh.write(line + "\n")
