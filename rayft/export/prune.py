"""``--prune FRACTION``: unstructured magnitude pruning of a merged model before it is written.

Global L1 pruning (``torch.nn.utils.prune.global_unstructured``): the FRACTION of the smallest-magnitude weights
across every ``nn.Linear`` of the model's body is set to zero, ranked together rather than layer by layer, so
layers with many small weights give up more. The task head (``classifier``, ``qa_outputs``, ``lm_head``,
``score``...) and the embeddings are kept whole. Unstructured: the tensors keep their shapes, so the files are as
large and dense runtimes as fast as before; what it buys is sparsity that compresses (and sparse kernels could use).
Structured pruning (whole heads or neurons) would shrink the shapes, but needs the architecture's own surgery
(transformers' ``prune_heads``) per model family; rayft does not do it.
"""

from __future__ import annotations

from typing import Any

import torch

from rayft.errors import RayftError

HEADS = ("classifier", "qa_outputs", "lm_head", "score", "pre_classifier")


def check_fraction(fraction: float) -> float:
    """``fraction`` if it is a share of weights to prune.

    Raises:
        RayftError: for a value outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise RayftError(f"--prune: expected a fraction of weights between 0 and 1 (exclusive), got {fraction!r}")
    return fraction


def prune(model: torch.nn.Module, fraction: float) -> dict[str, Any]:
    """Zero the ``fraction`` smallest-magnitude body weights of ``model`` in place (made permanent).

    Returns:
        What the manifest records: method, fraction asked, layers pruned and the zeros actually reached.
    """
    from torch.nn.utils import prune as torch_prune

    layers = [module for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not any(part in HEADS for part in name.split("."))]
    if not layers:
        raise RayftError("--prune: the model has no linear layers outside its head to prune")
    torch_prune.global_unstructured([(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured,
                                    amount=check_fraction(fraction))
    for module in layers:
        torch_prune.remove(module, "weight")
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    return {"method": "global L1 magnitude", "structured": False, "fraction": fraction, "layers": len(layers),
            "sparsity": zeros / total}
