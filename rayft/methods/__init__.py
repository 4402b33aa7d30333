"""Fine-tuning methods: one module per method, each registering itself in :data:`METHODS`."""

from rayft.methods import full, lora  # noqa: F401  (registration)
from rayft.methods.base import METHODS, Method, MethodParams, get_method, register_method, trainable_summary

__all__ = ["METHODS", "Method", "MethodParams", "get_method", "register_method", "trainable_summary"]
