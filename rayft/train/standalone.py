"""The worker's training step in one process, without Ray: what the LLM training benchmark and the GPU checks
drive (the GPU machines they run on have no Ray).

:class:`StepRunner` builds what :func:`rayft.train.worker.train_loop_per_worker` builds — the model with its
method, gradient checkpointing and task touches, the DeepSpeed engine, the (packed or padded) training loader —
and runs the loop's step on it (loss, backward, optimizer step), measuring each step's time, real (non-padding)
tokens and peak memory above what was resident before it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rayft.config.schema import ExperimentConfig
from rayft.data.packing import real_tokens
from rayft.train import engine as E
from rayft.train.recipe import Recipe


@contextlib.contextmanager
def one_process_group(backend: str = "gloo") -> Iterator[None]:
    """A torch process group of one rank (what a one-worker Ray Train run sets up), torn down afterwards; an
    existing group is used as it is."""
    from rayft.paths import setup_env

    setup_env()
    if torch.distributed.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE="1")
    torch.distributed.init_process_group(backend, rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


class PeakMemory:
    """Peak memory of a block above what was in use when it began, in bytes (``.peak``).

    On a GPU: torch's allocator statistics. On a CPU: the process's resident high-water mark (Linux resets it
    through ``/proc/self/clear_refs``) after glibc has handed its freed memory back (``malloc_trim``), with large
    blocks always mapped and unmapped on their own (a fixed ``M_MMAP_THRESHOLD``): otherwise memory freed by one
    step stays resident and the next step's peak hides in it.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _return_freed_memory()
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current resident size
            self._base = _status("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self.peak = _status("VmHWM") - self._base


def _return_freed_memory() -> None:
    """glibc: map blocks of 64 KiB and more on their own from now on, and give back what is free now."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixing it also stops glibc from raising it as blocks are freed)
    libc.malloc_trim(0)


def _status(key: str) -> int:
    """A size from /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


@dataclass(frozen=True)
class Step:
    """One optimizer step: its loss, wall and CPU seconds, real tokens, examples and peak memory above the resting
    state. CPU seconds (every thread of the process) still compare where a shared CPU makes wall time wander."""

    loss: float
    seconds: float
    cpu_seconds: float
    tokens: int
    examples: int
    peak_bytes: int


class StepRunner:
    """The worker's model, engine and training loader for ``cfg`` on ``data`` (a PreparedData), in this process
    (inside :func:`one_process_group`)."""

    def __init__(self, cfg: ExperimentConfig, data: Any, steps: int | None = None) -> None:
        """``steps``: the learning-rate schedule's length; None: one epoch of the training loader and one more."""
        self.recipe = Recipe.of(cfg)
        torch.manual_seed(cfg.train.seed)
        model = E.build_model(self.recipe, data)
        self.loader = E.make_loader(data.splits["train"], self.recipe, data.pad_id, 0, 1, train=True)
        self.loader.sampler.set_epoch(0)
        self.steps = steps if steps is not None else len(self.loader) + 1
        self.engine = E.build_engine(model, self.recipe, self.steps)

    def run(self, steps: int | None = None) -> list[Step]:
        """``steps`` steps of the worker loop, by default the schedule's (one batch each; the epoch starts again
        when it runs out)."""
        steps = self.steps if steps is None else steps
        out: list[Step] = []
        batches = iter(self.loader)
        while len(out) < steps:
            batch = next(batches, None)
            if batch is None:
                batches = iter(self.loader)
                continue
            with PeakMemory(self.engine.device) as memory:
                start, cpu_start = time.perf_counter(), time.process_time()
                loss = E.train_loss(self.engine, self.recipe, batch)
                self.engine.backward(loss)
                self.engine.step()
                value = loss.item()  # waits for the device
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            out.append(Step(value, seconds, cpu_seconds, real_tokens(batch), len(batch["index"]), memory.peak))
        return out
