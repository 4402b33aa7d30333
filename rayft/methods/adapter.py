"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): small residual down-project → nonlinearity →
up-project modules on the output of each block's attention and/or feed-forward sublayer.

peft has no such method, so this module implements it: the adapters live in one ``bottleneck_adapters`` module
of the model and are applied by forward hooks on the sublayers' output projections, which leaves every base
weight name unchanged. ``houlsby`` places one after the attention output and one after the feed-forward output of
every block; ``pfeiffer`` only after the feed-forward. The up-projection starts at zero, so training starts from the
base model's exact outputs. The result is stored as ``bottleneck_config.json`` + ``bottleneck_model.safetensors``
(adapter and head weights only) and loaded onto a plain transformers base with :meth:`Adapter.load`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodParams, register_method
from rayft.methods.layers import is_head

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_model.safetensors"
CONTAINER = "bottleneck_adapters"
ATTN_OUTPUTS = ("attention.output.dense", "self_attn.o_proj", "self_attn.out_proj", "attn.c_proj", "attn.out_proj")
FFN_OUTPUTS = ("output.dense", "mlp.down_proj", "mlp.c_proj", "mlp.fc2", "fc2", "mlp.dense_4h_to_h")
ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}


class AdapterParams(MethodParams):
    placement: Literal["houlsby", "pfeiffer"] = "pfeiffer"
    size: int = Field(64, ge=1, le=16384, description="bottleneck width")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    scaling: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    norms: bool = Field(False, description="also train the LayerNorm/RMSNorm weights (Houlsby's recipe)")
    attn_modules: list[str] | None = Field(None, description="name suffixes of attention output projections")
    ffn_modules: list[str] | None = Field(None, description="name suffixes of feed-forward output projections")


class Bottleneck(torch.nn.Module):
    """``h + scaling * up(dropout(act(down(h))))`` with ``up`` initialized to zero."""

    def __init__(self, dim: int, params: AdapterParams) -> None:
        super().__init__()
        self.down = torch.nn.Linear(dim, params.size)
        self.act = ACTIVATIONS[params.activation]()
        self.dropout = torch.nn.Dropout(params.dropout)
        self.up = torch.nn.Linear(params.size, dim)
        self.scaling = params.scaling
        torch.nn.init.normal_(self.down.weight, std=1e-2)
        torch.nn.init.zeros_(self.down.bias)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.scaling * self.up(self.dropout(self.act(self.down(hidden))))


def adapter_targets(model: torch.nn.Module, params: AdapterParams) -> list[str]:
    """Names of the linear layers whose outputs get an adapter, in model order."""
    attn = tuple(params.attn_modules or ATTN_OUTPUTS)
    ffn = tuple(params.ffn_modules or FFN_OUTPUTS)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or is_head(model, name + ".weight"):
            continue
        is_attn = name.endswith(tuple("." + s for s in attn))
        is_ffn = not is_attn and name.endswith(tuple("." + s for s in ffn))
        if is_ffn or (is_attn and params.placement == "houlsby"):
            out.append(name)
    return out


def attach(model: torch.nn.Module, params: AdapterParams, targets: list[str]) -> torch.nn.Module:
    """Add a bottleneck after each target layer (forward hooks), in place."""
    container = torch.nn.ModuleDict()
    model.add_module(CONTAINER, container)
    for name in targets:
        layer = model.get_submodule(name)
        key = name.replace(".", "__")
        container[key] = Bottleneck(layer.out_features, params).to(layer.weight.device, layer.weight.dtype)
        layer.register_forward_hook(lambda _m, _in, out, k=key: container[k](out) if container.enabled else out)
    container.enabled = True
    return model


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the base model without its bottleneck adapters (like peft's ``disable_adapter``), e.g. as a reference."""
    container = getattr(model, CONTAINER)
    container.enabled = False
    try:
        yield model
    finally:
        container.enabled = True


def _norm_params(model: torch.nn.Module) -> set[int]:
    norms = [m for m in model.modules() if type(m).__name__.endswith(("LayerNorm", "RMSNorm"))]
    return {id(p) for m in norms for p in m.parameters(False)}


class Adapter(Method):
    name = "adapter"
    params = AdapterParams
    is_peft = False
    hot_swappable = False
    artifact = "modules"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: AdapterParams, task_type: str) -> torch.nn.Module:
        targets = adapter_targets(model, params)
        if not targets:
            raise ValueError(f"{type(model).__name__}: no layers match the adapter targets "
                             f"{params.attn_modules or ATTN_OUTPUTS} / {params.ffn_modules or FFN_OUTPUTS}")
        norms = _norm_params(model) if params.norms else set()
        for name, p in model.named_parameters():
            p.requires_grad_(is_head(model, name) or id(p) in norms)
        attach(model, params, targets)
        model._rayft_adapter = {"params": params.model_dump(), "targets": targets}
        return model

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        """Write the adapter config and every trainable tensor (adapters, head, norms when trained)."""
        from safetensors.torch import save_file

        os.makedirs(out_dir, exist_ok=True)
        tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters()
                   if p.requires_grad}
        save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {**model._rayft_adapter, "method": self.name, "base_class": type(model).__name__}
        with open(os.path.join(out_dir, CONFIG_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)

    def load(self, model: torch.nn.Module, folder: str) -> torch.nn.Module:
        """Attach stored adapters (and head) to a freshly loaded base model.

        Raises:
            ValueError: if the stored tensors do not fit this base model.
        """
        from safetensors.torch import load_file

        with open(os.path.join(folder, CONFIG_FILE)) as fh:
            meta: dict[str, Any] = json.load(fh)
        params = AdapterParams.model_validate(meta["params"])
        attach(model, params, meta["targets"])
        model._rayft_adapter = {"params": params.model_dump(), "targets": meta["targets"]}
        tensors = load_file(os.path.join(folder, WEIGHTS_FILE))
        result = model.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"stored adapter tensors do not fit {type(model).__name__}: {result.unexpected_keys[:5]}")
        return model


METHOD = register_method(Adapter())
