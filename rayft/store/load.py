"""Load stored results for inference in-process (the server and tests use the same code)."""

from __future__ import annotations

from typing import Any

import torch

from rayft.config.schema import ExperimentConfig
from rayft.errors import StoreError
from rayft.store.store import AdapterStore, Manifest


def manifest_config(manifest: Manifest) -> ExperimentConfig:
    """The experiment config recorded in a manifest."""
    return ExperimentConfig.model_validate(manifest.config)


def base_key(manifest: Manifest) -> tuple[str, str, int]:
    """Adapters that share this key can hot-swap on one loaded base model."""
    return (manifest.base_model, manifest.task, len(manifest.labels or []))


def load_base(manifest: Manifest) -> tuple[torch.nn.Module, Any, str]:
    """The base model with this manifest's task head, its tokenizer, and its fingerprint.

    Raises:
        StoreError: if the base model's weights differ from the ones the adapter was trained on.
    """
    from rayft.models import fingerprint, load_tokenizer, resolve_model
    from rayft.tasks import get_task

    path = resolve_model(manifest.base_model)
    found = fingerprint(path)
    if manifest.base_fingerprint and found != manifest.base_fingerprint:
        raise StoreError(f"adapter {manifest.adapter_id!r} was trained on base {manifest.base_model!r} with "
                         f"fingerprint {manifest.base_fingerprint}, but the local base has {found}")
    cfg = manifest_config(manifest)
    model = get_task(manifest.task).build_model(path, cfg, manifest.labels)
    return model.eval(), load_tokenizer(path), found


def load_for_inference(store: AdapterStore, adapter_id: str) -> tuple[torch.nn.Module, Any, Manifest]:
    """A ready-to-predict model for one stored result (adapter on its base, a full or merged model, or an ONNX
    graph in an onnxruntime session, called like a transformers model).

    Raises:
        StoreError: for an unknown id, a corrupt folder or a base-model mismatch.
    """
    from peft import PeftModel

    from rayft.models import load_tokenizer
    from rayft.tasks import get_task

    manifest = store.manifest(adapter_id)
    if manifest.head is not None:  # one head of a multi-task entry: the entry, answering through that head
        return _head(store, manifest)
    folder = str(store.path(adapter_id))
    try:
        if manifest.kind in ("adapter", "modules"):
            base, tokenizer, _ = load_base(manifest)
            method, params = _method(manifest)
            if manifest.kind == "modules":
                model = method.load(base, folder)
            else:
                # the base as it trained (e.g. QLoRA's 4-bit layers), then the stored adapter on it
                model = PeftModel.from_pretrained(method.prepare_base(base, params), folder)
        elif manifest.kind == "onnx":
            from rayft.export.graphs import OnnxModel

            model, tokenizer = OnnxModel(folder), load_tokenizer(folder)
        else:
            model = get_task(manifest.task).build_model(folder, manifest_config(manifest), manifest.labels)
            tokenizer = load_tokenizer(folder)
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
        raise StoreError(f"adapter {adapter_id!r} in {store.root} could not be loaded: {exc}") from None
    return model.eval(), tokenizer, manifest


def _method(manifest: Manifest):
    """The method that produced ``manifest`` and its parameters as trained.

    Raises:
        StoreError: if this installation does not know the method.
    """
    from rayft.methods import METHODS

    if manifest.method not in METHODS:
        raise StoreError(f"adapter {manifest.adapter_id!r} was made by method {manifest.method!r}, which this "
                         f"installation does not have (known: {', '.join(METHODS.names())})")
    method = METHODS.get(manifest.method)
    return method, method.params.model_validate(manifest_config(manifest).method_params())


def _head(store: AdapterStore, view: Manifest) -> tuple[torch.nn.Module, Any, Manifest]:
    """A multi-task entry loaded whole, wrapped to answer as its head ``view.head`` alone.

    Raises:
        StoreError: as :func:`load_for_inference` does for the entry.
    """
    from rayft.store.heads import heads_of
    from rayft.store.store import split_ref
    from rayft.tasks.multitask import head_view

    model, tokenizer, entry = load_for_inference(store, split_ref(view.adapter_id)[0])
    names = [name for name, _, _ in heads_of(entry.config.get("tasks"), entry.labels)]
    return head_view(model, names.index(view.head)).eval(), tokenizer, view
