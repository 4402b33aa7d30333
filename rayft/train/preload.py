"""The training stack imported when a Ray Train worker's process starts, before any trial needs the process.

A sweep's trials each train in fresh worker processes, and on a small machine importing torch, transformers,
peft and DeepSpeed (plus the model's own module) is most of a trial's start-up. Ray runs a *worker process
setup hook* in every new process of a runtime environment that names one, before the process takes any work.
The sweep gives its trials' Train workers :func:`preload_env` and asks Ray to start such processes ahead of the
trials that will use them (:mod:`rayft.sweep.warm`): a process that has only imported modules holds nothing
of any trial, so every trial still trains in a process of its own.

Raises nothing: a module that fails to import here is imported (and fails, with its real error) by the
training loop itself.
"""

from __future__ import annotations

import importlib
import time

from rayft.options import WorkerPreload, worker_preload

HOOK = "rayft.train.preload.import_training_stack"

warm_since: float | None = None  # when this process finished importing the training stack (None: never)


def preload_env(model_type: str, quantized: bool, tag: str) -> dict[str, str]:
    """Environment variables that make a Ray worker process import the training stack as it starts.

    Ray's variable naming a process's setup hook is private: ``ray.init`` sets it only job-wide, Train workers
    need it per actor.
    """
    from rayft.ray_internals import SETUP_HOOK_VAR

    return {SETUP_HOOK_VAR: HOOK, **WorkerPreload(model_type, quantized, tag).env()}


def import_training_stack() -> None:
    """Ray's setup hook: import what :func:`rayft.train.worker.train_loop_per_worker` and its first step use."""
    global warm_since
    from rayft.train.entry import keep_out_bitsandbytes

    preload = worker_preload()
    if not preload.quantized:
        keep_out_bitsandbytes()
    for name in ("rayft.train.worker", "peft", "deepspeed", "deepspeed.runtime.engine",
                 "deepspeed.runtime.zero.stage_1_and_2", "transformers.optimization",
                 # DeepSpeed's optimizer check imports its Muon optimizer, which calls torch.compile at import
                 # time and so imports torch's inductor, a large part of the engine's start.
                 "deepspeed.runtime.zero.muon.muon_optimizer",
                 _modeling_module(preload.model_type)):
        if name:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the loop imports it again and reports the real error
                continue
    warm_since = time.time()


def _modeling_module(model_type: str) -> str:
    """transformers' module of a model type (``llama`` -> ``transformers.models.llama.modeling_llama``)."""
    safe = model_type.replace("-", "_")
    return f"transformers.models.{safe}.modeling_{safe}" if safe.isidentifier() else ""


def model_type(model_path: str) -> str:
    """``model_type`` from a local model folder's config.json ("" if it has none)."""
    import json
    from pathlib import Path

    try:
        return str(json.loads((Path(model_path) / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def started_warm(trial_started_at: float | None) -> bool:
    """Whether this process had the training stack imported before its trial began."""
    return warm_since is not None and trial_started_at is not None and warm_since < trial_started_at


def prestarted(trial_started_at: float | None) -> bool:
    """Whether this process was started before its trial began (Ray prestarted it for the trial)."""
    import psutil

    return trial_started_at is not None and psutil.Process().create_time() < trial_started_at
