"""Base-model catalog and loading."""

from rayft.models.catalog import MODELS, ModelError, fingerprint, load_tokenizer, model_kind, resolve_model

__all__ = ["MODELS", "ModelError", "fingerprint", "load_tokenizer", "model_kind", "resolve_model"]
