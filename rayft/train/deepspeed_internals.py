"""Every use of a private DeepSpeed API in rayft: the one module that a DeepSpeed upgrade can break.

Two fixes of ZeRO-3's memory on CPU workers live here.

**One copy of fp32 weights.** ZeRO-3 keeps its optimizer's fp32 "master" partitions beside the partitions the
model computes with. For a model already in fp32 it means to share them ("we don't need another copy", in
``_create_fp32_partitions``), but it tests ``tensor.device == self.device`` against a device *name* (``'cpu'``,
``'cuda:0'``), which a ``torch.device`` never equals, so it clones them: a second copy of the weights, 256 MB a
worker on smollm2-135m between two workers. :func:`share_fp32_master_weights` points each master partition at the
partition it was cloned from, as DeepSpeed intended; its step then copies each partition onto itself.

**Collectives without gloo's copies.** ZeRO-3 moves parameters and gradients with two module-level functions of
DeepSpeed's, each ending in a ``torch.distributed`` collective that, on gloo (CPU workers), copies a whole buffer first:

- ``_dist_allgather_fn`` (``deepspeed.runtime.zero.partition_parameters``) gathers a layer's weights before its
  forward and backward with ``all_gather_into_tensor``: on gloo that keeps a second copy of the gathered weights;
- ``_torch_reduce_scatter_fn`` (``deepspeed.runtime.comm.coalesced_collectives``) averages each gradient bucket
  with ``reduce_scatter_tensor``: on gloo that copies the bucket.

Measured between two gloo ranks on SmolLM2's 28.3M-element tied embedding (docs/benchmarks.md): the all-gather held
108 MB more and the reduce-scatter 164 MB more than an in-place ``all_reduce`` of the same buffer (2 MB), and both
took longer. :func:`use_in_place_collectives_on_gloo` replaces the two functions with ones that, on a gloo group,
run that in-place ``all_reduce`` instead:

- gather: this rank's partition goes into its slot of the output, the other slots are zeroed, and a sum over the
  ranks fills them (adding zeros is exact);
- reduce-scatter: the bucket is summed in place and this rank keeps its chunk. DeepSpeed's caller treats the bucket
  as scratch (it has already divided it in place), and the output it asks for is a view of that same bucket.

DeepSpeed's own ``stage3_use_all_reduce_for_fetch_params`` does the gather's part for buckets of several
parameters only, not for a parameter fetched alone (the tied embedding, the largest). Other backends (nccl) keep
DeepSpeed's calls unchanged.

:data:`PRIVATE` names what this module touches; its unit test resolves each entry, so an upgrade that moves one
fails there, naming the symbol.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

GATHER = ("deepspeed.runtime.zero.partition_parameters", "_dist_allgather_fn")
REDUCE_SCATTER = ("deepspeed.runtime.comm.coalesced_collectives", "_torch_reduce_scatter_fn")
# The private DeepSpeed functions this module replaces: (module, attribute).
PRIVATE: tuple[tuple[str, str], ...] = (GATHER, REDUCE_SCATTER)
# Private attributes of ZeRO-3's optimizer that share_fp32_master_weights reads and sets: "module:Class" -> names.
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3": (
        "fp16_partitioned_groups_flat", "fp32_partitioned_groups_flat", "offload_optimizer"),
}
_ORIGINAL = "_rayft_original_"


def _on_gloo(group: Any) -> bool:
    import torch.distributed as dist

    return dist.get_backend(group) == "gloo"


def _my_slot(flat: Any, group: Any) -> slice:
    """Where this rank's equal share of the 1-D tensor ``flat`` lies."""
    import torch.distributed as dist

    size = flat.numel() // dist.get_world_size(group)
    rank = dist.get_rank(group)
    return slice(rank * size, (rank + 1) * size)


def _whole_multiple(part: Any, whole: Any, group: Any) -> bool:
    import torch.distributed as dist

    return whole.numel() == part.numel() * dist.get_world_size(group) and whole.is_contiguous()


def all_gather_in_place(input_tensor: Any, output_tensor: Any, group: Any = None, async_op: bool = False) -> Any:
    """``all_gather_into_tensor`` of ``input_tensor`` (this rank's partition, possibly already its slot of the
    output) into ``output_tensor``, as a sum over the ranks in place: no second copy of the output."""
    import torch.distributed as dist

    flat = output_tensor.view(-1)
    slot = _my_slot(flat, group)
    if flat[slot].data_ptr() != input_tensor.data_ptr():
        flat[slot].copy_(input_tensor.reshape(-1))
    flat[:slot.start].zero_()
    flat[slot.stop:].zero_()
    return dist.all_reduce(output_tensor, group=group, async_op=async_op)


def reduce_scatter_in_place(input_tensor: Any, output_tensor: Any, group: Any = None) -> None:
    """Sum ``input_tensor`` over ``group`` in place and leave this rank's equal chunk of it in ``output_tensor``
    (which may be that chunk itself): ``reduce_scatter_tensor``'s result, without gloo's copy of the input."""
    import torch.distributed as dist

    dist.all_reduce(input_tensor, group=group)
    flat = input_tensor.view(-1)
    chunk = flat[_my_slot(flat, group)]
    if chunk.data_ptr() != output_tensor.data_ptr() or chunk.numel() != output_tensor.numel():
        output_tensor.view(-1).copy_(chunk)


def _gather(original: Callable) -> Callable:
    def gather(input_tensor, output_tensor, group=None):
        if not (_on_gloo(group) and _whole_multiple(input_tensor, output_tensor, group)):
            return original(input_tensor, output_tensor, group=group)
        return all_gather_in_place(input_tensor, output_tensor, group, async_op=True)  # DeepSpeed waits on it
    return gather


def _reduce_scatter(original: Callable) -> Callable:
    def reduce_scatter(input_tensor, output_tensor, group=None, async_op=False, prof=False):
        if async_op or not (_on_gloo(group) and _whole_multiple(output_tensor, input_tensor, group)):
            return original(input_tensor, output_tensor, group=group, async_op=async_op, prof=prof)
        reduce_scatter_in_place(input_tensor, output_tensor, group)
        return None
    return reduce_scatter


def use_in_place_collectives_on_gloo() -> None:
    """Route ZeRO-3's parameter gathers and gradient reduce-scatters through the in-place versions above on gloo
    groups (idempotent; DeepSpeed's own functions still serve every other backend)."""
    for (module_name, name), wrap in ((GATHER, _gather), (REDUCE_SCATTER, _reduce_scatter)):
        module = importlib.import_module(module_name)
        if not hasattr(module, _ORIGINAL + name):
            original = getattr(module, name)
            setattr(module, _ORIGINAL + name, original)
            setattr(module, name, wrap(original))


def share_fp32_master_weights(engine: Any) -> int:
    """At ZeRO-3 without offloading, make every fp32 master partition that is a copy of the model's own fp32
    partition (same dtype and device, different memory) that partition itself; returns how many it shared.

    The optimizer's state stays keyed by the same tensor objects; only their memory changes, so nothing else of
    DeepSpeed's sees a difference except the memory freed.
    """
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    optimizer = engine.optimizer
    if not isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3) or optimizer.offload_optimizer:
        return 0
    shared = 0
    for model_part, master in zip(optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat):
        if (model_part is None or master.numel() != model_part.numel() or master.dtype != model_part.dtype
                or master.device != model_part.device or master.data_ptr() == model_part.data_ptr()):
            continue
        master.data = model_part.data  # the clone (same values) is freed
        shared += 1
    return shared
