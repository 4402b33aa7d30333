"""QLoRA: the base model's linear layers quantized to 4 bits (NF4, bitsandbytes) and frozen; LoRA trains on top.

bitsandbytes 0.50 runs 4-bit layers on CPU. The layers are quantized in place after loading (every
``nn.Linear`` of the backbone; the task head stays full precision and trains), so any task's model works.
Under DeepSpeed the frozen 4-bit weights stay whole on every worker: ZeRO stages 0-2 work (they partition
only what trains), stage 3 would partition the packed 4-bit tensors and is refused at validation.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodContext, register_method
from rayft.methods.layers import is_head
from rayft.methods.lora import LoraParams, lora_config


class QloraParams(LoraParams):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="also quantize the quantization constants")


def quantize_backbone(model: torch.nn.Module, params: QloraParams) -> torch.nn.Module:
    """Replace every backbone ``nn.Linear`` with a frozen ``bitsandbytes`` 4-bit layer, in place."""
    import bitsandbytes as bnb

    dtype = next(model.parameters()).dtype
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not torch.nn.Linear or is_head(model, full + ".weight"):
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=params.double_quant,
                                      quant_type=params.quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             compress_statistics=params.double_quant, quant_type=params.quant_type)
            layer.support_avx512bf16_for_cpu = False  # one kernel in train and eval: identical outputs
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, layer.to(child.weight.device))  # .to() packs the weights
    return model


class Qlora(Method):
    name = "qlora"
    params = QloraParams
    is_peft = True
    hot_swappable = False  # needs its own 4-bit base to reproduce the trained outputs
    artifact = "adapter"
    zero3 = False
    quantized = True  # its workers import bitsandbytes (rayft.train.entry.QUANTIZED_METHODS)
    zero3_note = "stage 3 would partition the packed 4-bit base weights; stages 0-2 partition only what trains"

    def apply(self, model: torch.nn.Module, params: QloraParams, task_type: str) -> torch.nn.Module:
        from peft import get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        quantize_backbone(model, params)
        return get_peft_model(model, lora_config(params, task_type))

    def prepare_base(self, model: torch.nn.Module, params: QloraParams) -> torch.nn.Module:
        """The base as it was during training (4-bit), before the stored adapter is attached."""
        return quantize_backbone(model, params)

    def check(self, params: QloraParams, ctx: MethodContext) -> list[tuple[str, Any, str]]:
        if importlib.util.find_spec("bitsandbytes") is None:
            return [("method.name", self.name, "a method whose dependencies are installed: qlora needs bitsandbytes "
                     "(pip install \"rayft[qlora]\"); 'lora' trains the same adapters on a full-precision base")]
        return []


METHOD = register_method(Qlora())
