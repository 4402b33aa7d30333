"""Stable cache locations shared by every stage (models, tokenized data, compiled ops)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$RAYFT_CACHE`` (default ``~/.cache/rayft``) joined with ``parts``, created on demand."""
    from rayft.options import cache_root

    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def extensions_dir() -> Path:
    """Where DeepSpeed keeps the ops it compiles for this Python environment (one folder per environment).

    ninja rebuilds an op whenever its compile command changes, and the command names the environment's torch
    include paths: two checkouts (two virtualenvs) sharing one folder would rebuild each other's ops, about a
    minute each time, whenever a run switched between them.
    """
    prefix = os.path.realpath(sys.prefix)
    return cache_dir("torch_extensions", f"{Path(prefix).name}-{hashlib.sha1(prefix.encode()).hexdigest()[:10]}")


def setup_env() -> None:
    """Environment every rayft process (driver and workers) should share.

    DeepSpeed picks its CPU accelerator quietly and compiles its ops once into a stable cache
    (:func:`extensions_dir`, unless ``TORCH_EXTENSIONS_DIR`` says otherwise).
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # keep worker prints single, not re-logged
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # cloud-only; noisy on local clusters
    # Ray Train gives a worker group 60 s to start, then retries with a traceback in the log; on a busy small
    # machine starting the workers (importing torch) takes longer than that without anything being wrong.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    os.environ.setdefault("WANDB_SILENT", "true")
    # Ray starts worker processes at niceness 15, below its own bookkeeping processes (raylet, GCS, dashboard):
    # training workers then lose the CPU to each of their wake-ups. Read by the raylets that rayft starts.
    os.environ.setdefault("RAY_worker_niceness", "0")


def quiet_libraries() -> None:
    """Silence per-process chatter (weight-loading reports, deprecation noise) in workers and replicas."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch import failures surface elsewhere
        return False
