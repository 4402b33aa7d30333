"""What the tests share: tiny models and data (``tiny``, ``tiny_tasks``), the method cases, serving and sweep
helpers, and the small experiment config most tests start from (:func:`cls_config`).

Tests import it as ``tests.support`` from the repository root: pytest puts the root on ``sys.path`` because
``tests/`` is a package, and the local Ray of the integration tests hands the root to its workers (see
``ray_local`` in ``tests/conftest.py``), so a Ray worker imports these modules by the same names.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def cls_config(model: Path, data: Path, tmp: Path, **sections) -> dict:
    """A small sequence-classification experiment on the tiny model and data."""
    raw = {
        "name": "tiny-cls", "output_dir": str(tmp / "runs"),
        "model": {"name": str(model), "max_length": 32},
        "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                 "validation_size": 40, "test_size": 40},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "log_every": 5},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "zero_stage": 2},
        "tracking": {"wandb": False},
        "store": {"path": str(tmp / "store")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def sft_config(model: Path, chat: Path, tmp: Path, method: dict | None = None, **sections) -> dict:
    """A small instruction-tuning experiment on the tiny Llama and the chat rows (8 held out for validation, no
    test split); ``method`` replaces the default LoRA on the attention projections as a whole."""
    raw = cls_config(model, chat, tmp, task={"name": "sft"}, **sections)
    raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response",
                       validation_size=8, test_size=0)
    raw["method"] = method or {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    return raw
