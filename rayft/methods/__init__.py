"""Fine-tuning methods: one module per method, each registering itself in :data:`METHODS`."""

from rayft.methods import (  # noqa: F401  (registration)
    adapter, bitfit, dora, full, ia3, lora, prefix, prompt, ptuning, qlora, unfreeze,
)
from rayft.methods.base import (
    METHODS, Method, MethodContext, MethodParams, get_method, method_problems, method_summary, register_method,
    trainable_summary,
)

__all__ = ["METHODS", "Method", "MethodContext", "MethodParams", "get_method", "method_problems", "method_summary",
           "register_method", "trainable_summary"]
