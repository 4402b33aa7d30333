"""ZeRO-3's parameter gathers and gradient reduce-scatters on gloo: the in-place replacements give DeepSpeed's own
results, and the private DeepSpeed symbols they replace still exist."""

from __future__ import annotations

import importlib
import inspect
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayft.train import deepspeed_internals

WORLD = 2


def test_every_private_symbol_resolves():
    for module, name in deepspeed_internals.PRIVATE:
        assert callable(getattr(importlib.import_module(module), name)), f"{module}.{name} moved: see this module"
    for owner, names in deepspeed_internals.PRIVATE_ATTRIBUTES.items():
        module, cls = owner.split(":")
        source = inspect.getsource(getattr(importlib.import_module(module), cls))
        assert [n for n in names if f"self.{n} =" not in source] == [], f"{owner} no longer sets these"


def test_no_other_module_touches_a_private_deepspeed_name():
    package = Path(deepspeed_internals.__file__).resolve().parents[1]
    uses = [f"{path.relative_to(package)}: {m.group(0)}" for path in sorted(package.rglob("*.py"))
            if path.name != "deepspeed_internals.py"
            for m in re.finditer(r"deepspeed(\.\w+)*\._\w+", path.read_text())]
    assert uses == [], "private DeepSpeed names belong in rayft/train/deepspeed_internals.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(rank: int) -> list[list[torch.Tensor]]:
    """Bucket lists as ZeRO-3 hands them over: several odd-sized gradients (padded and interleaved) and one
    gradient that divides evenly (reduced in its own buffer)."""
    g = torch.Generator().manual_seed(rank)
    return [[torch.randn(7, 3, generator=g), torch.randn(10, generator=g), torch.randn(1, generator=g)],
            [torch.randn(8, 4, generator=g)]]


def _partition(rank: int) -> torch.Tensor:
    return torch.randn(6, generator=torch.Generator().manual_seed(10 + rank))


def _gathers(gather, rank: int) -> list[torch.Tensor]:
    """Gathers as ZeRO-3 makes them: a partition apart from the output (a parameter fetched alone) and one written
    into its own slot of an output whose other slots hold garbage (a bucket of parameters)."""
    alone = torch.empty(6 * WORLD)
    gather(_partition(rank), alone, None).wait()
    bucket = torch.full((6 * WORLD,), float("nan"))
    slot = bucket.narrow(0, 6 * rank, 6)
    slot.copy_(_partition(rank))
    gather(slot, bucket, None).wait()
    return [alone, bucket]


def _ranks(rank: int, port: int) -> None:
    import os

    import deepspeed
    from deepspeed.runtime.comm import coalesced_collectives
    from deepspeed.runtime.zero import partition_parameters

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    deepspeed.init_distributed(dist_backend="gloo")
    want = [coalesced_collectives.reduce_scatter_coalesced(bucket) for bucket in _grads(rank)]
    deepspeeds = partition_parameters._dist_allgather_fn, coalesced_collectives._torch_reduce_scatter_fn
    want_gathers = _gathers(partition_parameters._dist_allgather_fn, rank)
    deepspeed_internals.use_in_place_collectives_on_gloo()
    deepspeed_internals.use_in_place_collectives_on_gloo()  # idempotent: wraps DeepSpeed's functions once
    assert (partition_parameters._dist_allgather_fn, coalesced_collectives._torch_reduce_scatter_fn) != deepspeeds
    got = [coalesced_collectives.reduce_scatter_coalesced(bucket) for bucket in _grads(rank)]
    for want_gather, got_gather in zip(want_gathers, _gathers(partition_parameters._dist_allgather_fn, rank)):
        torch.testing.assert_close(got_gather, want_gather, rtol=0, atol=0)
        torch.testing.assert_close(got_gather, torch.cat([_partition(r) for r in range(WORLD)]), rtol=0, atol=0)
    # The mean over ranks of each gradient, this rank's slice of it, computed without any collective.
    everyone = [_grads(r) for r in range(WORLD)]
    for b, bucket in enumerate(got):
        for t, part in enumerate(bucket):
            flat = (sum(grads[b][t] for grads in everyone) / WORLD).view(-1)
            size = -(-flat.numel() // WORLD)
            expect = flat[rank * size:(rank + 1) * size]
            assert part.shape == want[b][t].shape == expect.shape
            torch.testing.assert_close(part, want[b][t], rtol=0, atol=1e-6)
            torch.testing.assert_close(part, expect, rtol=0, atol=1e-6)
    out = torch.empty(4)  # an output that is not a view of the input is filled too
    deepspeed_internals.reduce_scatter_in_place(torch.arange(8.0) + rank, out)
    torch.testing.assert_close(out, (2 * torch.arange(8.0) + 1)[rank * 4:(rank + 1) * 4])
    dist.destroy_process_group()


def test_in_place_collectives_match_deepspeeds_on_two_gloo_ranks():
    """In a fresh interpreter (this one may have patched DeepSpeed already, and holds a process group of its
    own), two forked gloo ranks."""
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "tests.unit.train.test_deepspeed_internals"], cwd=repo,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ranks agree"  # (DeepSpeed logs to stdout before it)


def _zero3_full(tiny_llama, chat_jsonl, tmp_path):
    from rayft.config import build_config
    from tests.support import sft_config

    return build_config(sft_config(tiny_llama, chat_jsonl, tmp_path, {"name": "full"},
                                   train={"batch_size": 4, "lr": 1e-2, "max_grad_norm": 1.0},
                                   scaling={"zero_stage": 3}))


def test_zero3_master_weights_share_the_models_fp32_partitions_and_train_the_same(process_group, tiny_llama,
                                                                                  chat_jsonl, tmp_path, monkeypatch):
    from rayft.data import prepare_data
    from rayft.train.standalone import StepRunner

    cfg = _zero3_full(tiny_llama, chat_jsonl, tmp_path)
    data = prepare_data(cfg)
    runner = StepRunner(cfg, data, 4)
    optimizer = runner.engine.optimizer
    pairs = list(zip(optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat))
    assert pairs and all(master.data_ptr() == part.data_ptr() for part, master in pairs)
    shared = [step.loss for step in runner.run(4)]
    monkeypatch.setattr(deepspeed_internals, "share_fp32_master_weights", lambda engine: 0)
    runner = StepRunner(cfg, data, 4)
    optimizer = runner.engine.optimizer
    assert all(master.data_ptr() != part.data_ptr()  # DeepSpeed's own: a copy of each
               for part, master in zip(optimizer.fp16_partitioned_groups_flat,
                                       optimizer.fp32_partitioned_groups_flat))
    copied = [step.loss for step in runner.run(4)]
    assert shared[-1] < shared[0]  # it trains
    assert shared == pytest.approx(copied, abs=1e-6)


if __name__ == "__main__":
    import deepspeed.runtime.comm.coalesced_collectives  # noqa: F401  (imported once, here: the ranks fork)
    import deepspeed.runtime.zero.partition_parameters  # noqa: F401

    mp.start_processes(_ranks, args=(_free_port(),), nprocs=WORLD, join=True, start_method="fork")
    print("ranks agree")
