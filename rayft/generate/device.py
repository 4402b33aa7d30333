"""Where a served model runs: on a CUDA machine, the GPU in bfloat16 with PyTorch's SDPA attention."""

from __future__ import annotations

from typing import Any

import torch


def accelerate(model: Any) -> Any:
    """The model moved to the GPU in bfloat16 with SDPA attention when CUDA is present; unchanged otherwise (and
    for quantized models, which bitsandbytes already placed)."""
    if not torch.cuda.is_available() or getattr(model, "is_quantized", False) \
            or getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return model
    model.to(device="cuda", dtype=torch.bfloat16)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("sdpa")
        except (ValueError, ImportError):  # an architecture without SDPA keeps its own attention
            pass
    return model


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device
