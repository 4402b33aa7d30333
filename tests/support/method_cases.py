"""The parameters every registered method is tested with, shared by the method table tests (the unit one on
every task, the integration one inside a real Ray Train run): small enough for the tiny models of ``tiny.py``."""

from __future__ import annotations

HEAD = r"classifier\.|pooler\."  # a new head (and BERT's pooler feeding it) trains with every method
CASES = {  # method → (its parameters on the tiny BERT, the parameters a sequence classifier may change)
    "full": ({"layer_decay": 0.8, "head_lr": 2e-2}, r"."),
    "lora": ({"r": 4, "alpha": 8, "target_modules": ["query", "value"]}, r"lora_|classifier"),
    "dora": ({"r": 4, "alpha": 8, "target_modules": ["query", "value"]}, r"lora_|classifier"),
    "qlora": ({"r": 4, "alpha": 8, "target_modules": ["query", "value"]}, r"lora_|classifier"),
    "ia3": ({}, r"ia3_|classifier"),
    "prefix": ({"num_virtual_tokens": 4}, r"prompt_encoder|classifier"),
    "prompt": ({"num_virtual_tokens": 4}, r"prompt_encoder|classifier"),
    "ptuning": ({"num_virtual_tokens": 4, "encoder_hidden_size": 16}, r"prompt_encoder|classifier"),
    "adapter": ({"placement": "houlsby", "size": 8}, r"bottleneck_adapters|classifier"),
    "bitfit": ({}, r"\.bias$|classifier"),
    # 2 blocks, one more every 8 steps from the top: block 1 opens at step 8, block 0 and embeddings never.
    "unfreeze": ({"every": 8, "unit": "step", "layer_decay": 0.9}, r"layer\.1\.|" + HEAD),
}


def method_params(name: str, architecture: str = "bert") -> dict:
    """The table's parameters of method ``name`` for a tiny model of ``architecture`` (``bert`` or ``llama``):
    layer names in ``target_modules`` are BERT's, so other architectures get peft's default targets."""
    params = dict(CASES[name][0])
    if architecture != "bert":
        params.pop("target_modules", None)
    return params
