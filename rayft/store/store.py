"""Adapter store: one folder per exported result, loadable by plain peft/transformers, plus ``rayft.json``.

Layout::

    STORE/<adapter_id>/adapter_config.json + adapter_model.safetensors   (peft methods)
    STORE/<adapter_id>/config.json + model.safetensors + tokenizer files (full-weight methods)
    STORE/<adapter_id>/bottleneck_config.json + bottleneck_model.safetensors (bottleneck adapters + head)
    STORE/<adapter_id>/model.onnx + config.json + tokenizer files           (onnx / onnx-int8 exports)
    STORE/<adapter_id>/model.gguf + config.json + tokenizer files           (gguf exports)
    STORE/<adapter_id>/rayft.json                                        (the manifest)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayft.config.schema import default
from rayft.errors import StoreError

MANIFEST = "rayft.json"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.onnx", "*.gguf")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Manifest:
    adapter_id: str
    # "adapter" (peft folder), "full" (complete model folder, merged exports too), "modules" (rayft add-on modules
    # + head) or "onnx" (an ONNX graph + tokenizer)
    kind: str
    base_model: str  # the model.name the result was trained from
    base_fingerprint: str
    method: str
    task: str
    labels: list[str] | None
    metrics: dict[str, float]
    config: dict[str, Any]
    sweep_id: str | None = None
    trial_id: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    architecture: str | None = None
    max_length: int = default("model.max_length")  # older manifests: the schema's default
    format_version: int = 1
    hot_swappable: bool | None = None  # None (older manifests): true for peft adapters
    # how training rendered prompts (rayft.tasks.prompt_format.PromptFormat.to_dict) for causal LMs (sft, dpo);
    # None for other tasks and older manifests
    prompt_format: dict[str, Any] | None = None
    # exports (rayft export --format, rayft.export): the format ("merged", "onnx", "onnx-int8"; None: the store's own
    # adapter/full entry), what it was made from, its parity figures against that source, whether it was written
    # although they failed (--allow-drift), and the pruning applied (--prune)
    format: str | None = None
    source: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    drift: bool = False
    pruning: dict[str, Any] | None = None
    # a head of a multi-task entry served on its own (``<entry id>:<head>``, rayft.store.heads); None otherwise
    head: str | None = None

    @property
    def swappable(self) -> bool:
        """Whether the server may attach this result per request to a shared base model."""
        return self.kind == "adapter" and self.hot_swappable is not False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


HEAD_SEPARATOR = ":"  # ``<entry id>:<head>`` names one head of a multi-task entry
HEAD_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def split_ref(ref: str) -> tuple[str, str | None]:
    """(entry id, head or None) of a stored model's reference: an id, or ``<id>:<head>``.

    Raises:
        StoreError: for a malformed id or head.
    """
    entry, sep, head = ref.partition(HEAD_SEPARATOR) if isinstance(ref, str) else (ref, "", "")
    if sep and not HEAD_PATTERN.match(head):
        raise StoreError(f"model {ref!r}: {head!r} is not a head name (a letter, then letters, digits or '_')")
    return validate_id(entry), head if sep else None


def validate_ref(ref: str) -> str:
    """Return ``ref`` if it is a valid id or ``<id>:<head>``.

    Raises:
        StoreError: otherwise.
    """
    split_ref(ref)
    return ref


def validate_id(adapter_id: str) -> str:
    """Return ``adapter_id`` if it is a safe folder name.

    Raises:
        StoreError: for ids that could escape the store (``..``, slashes, absolute paths) or are malformed.
    """
    if not isinstance(adapter_id, str) or not ID_PATTERN.match(adapter_id) or ".." in adapter_id:
        raise StoreError(f"adapter id {adapter_id!r} is invalid: expected 1-128 characters of letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit, without '..'")
    return adapter_id


class AdapterStore:
    """A directory of exported adapters and full models, each with a manifest.

    ``root`` is a local path or any pyarrow filesystem URI (``s3://bucket/store``, see :mod:`rayft.storage`).
    A remote store is read through a local cache: :meth:`path` downloads an adapter on first use.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        from rayft.storage import resolve

        where = resolve(root)
        self.remote = None if where.local else where
        self.root: Any = Path(where.path) if where.local else str(root)

    def path(self, adapter_id: str) -> Path:
        """Folder of ``adapter_id`` (validated; never outside the store); for a remote store, its local copy.
        A head's (``<id>:<head>``) is its entry's."""
        adapter_id, _ = split_ref(adapter_id)
        if self.remote:
            return self._remote_copy(adapter_id)
        path = (self.root / validate_id(adapter_id)).resolve()
        if path.parent != self.root:
            raise StoreError(f"adapter id {adapter_id!r} resolves outside the store")
        return path

    def exists(self, adapter_id: str) -> bool:
        try:
            if split_ref(adapter_id)[1] is not None:
                self.manifest(adapter_id)
                return True
            if self.remote:
                return self.remote.is_file(f"{validate_id(adapter_id)}/{MANIFEST}")
            return (self.path(adapter_id) / MANIFEST).is_file()
        except StoreError:
            return False

    def manifest(self, adapter_id: str) -> Manifest:
        """Read one manifest.

        ``<id>:<head>`` gives the view of one head of a multi-task entry (:func:`rayft.store.heads.head_manifest`).

        Raises:
            StoreError: if the id is invalid, unknown, or its manifest is unreadable; a head its entry lacks.
        """
        entry, head = split_ref(adapter_id)
        if head is not None:
            from rayft.store.heads import head_manifest

            return head_manifest(self.manifest(entry), head)
        if self.remote:
            return self._remote_manifest(adapter_id)
        path = self.path(adapter_id) / MANIFEST
        if not path.is_file():
            raise StoreError(f"adapter {adapter_id!r} not found in store {self.root}")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"adapter {adapter_id!r}: unreadable manifest {path}: {exc}") from None

    def list(self, heads: bool = False) -> list[Manifest]:
        """Every readable manifest, oldest first (unreadable entries are skipped); with ``heads``, each multi-task
        entry is followed by the views of its heads."""
        out = []
        if self.remote:
            names = self.remote.subdirs()
        else:
            names = [c.parent.name for c in sorted(self.root.glob(f"*/{MANIFEST}"))] if self.root.is_dir() else []
        for name in names:
            try:
                out.append(self.manifest(name))
            except StoreError:
                continue
        if heads:
            from rayft.store.heads import head_manifests

            out += [h for m in out for h in head_manifests(m)]
        return sorted(out, key=lambda m: (m.created, m.adapter_id))

    def put(self, source_dir: str | os.PathLike[str], manifest: Manifest, *, overwrite: bool = False) -> Path:
        """Copy a ``save_pretrained`` folder into the store with its manifest, atomically.

        Raises:
            StoreError: if the id exists (and ``overwrite`` is false) or the source holds no model files.
        """
        src = Path(source_dir)
        if not any(any(src.glob(pattern)) for pattern in WEIGHT_FILES):
            raise StoreError(f"{src} holds no model weights to export")
        if self.remote:
            return self._remote_put(src, manifest, overwrite)
        target = self.path(manifest.adapter_id)
        if target.exists() and not overwrite:
            raise StoreError(f"adapter {manifest.adapter_id!r} already exists in {self.root}; pass --overwrite")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.adapter_id}.", dir=self.root))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, default=float))
            old = None
            if target.exists():  # move the old version aside in one rename: never a half-deleted folder
                old = Path(tempfile.mkdtemp(prefix=f".{manifest.adapter_id}.old.", dir=self.root))
                os.replace(target, old / "v")
            os.replace(tmp, target)  # readers never see a half-written adapter
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- remote stores (object stores have no rename: the manifest, written last, publishes an adapter) --

    def _remote_manifest(self, adapter_id: str) -> Manifest:
        name = f"{validate_id(adapter_id)}/{MANIFEST}"
        if not self.remote.is_file(name):
            raise StoreError(f"adapter {adapter_id!r} not found in store {self.root}")
        try:
            return Manifest.from_dict(json.loads(self.remote.read_text(name)))
        except (ValueError, TypeError, OSError) as exc:
            raise StoreError(f"adapter {adapter_id!r}: unreadable manifest in {self.root}: {exc}") from None

    def _remote_put(self, src: Path, manifest: Manifest, overwrite: bool) -> Path:
        adapter_id = validate_id(manifest.adapter_id)
        if self.exists(adapter_id) and not overwrite:
            raise StoreError(f"adapter {adapter_id!r} already exists in {self.root}; pass --overwrite")
        self.remote.delete(f"{adapter_id}/{MANIFEST}")  # unpublish first: readers never mix old and new files
        self.remote.delete(adapter_id)
        self.remote.upload(src, adapter_id)
        self.remote.write_text(f"{adapter_id}/{MANIFEST}", json.dumps(asdict(manifest), indent=2, default=float))
        return Path(self.remote.child(adapter_id).path)

    def _remote_copy(self, adapter_id: str) -> Path:
        """A local copy of one published adapter, downloaded once per published version."""
        import hashlib

        from rayft.paths import cache_dir

        manifest = self._remote_manifest(adapter_id)
        key = hashlib.sha256(f"{self.root}|{json.dumps(asdict(manifest), default=float)}".encode()).hexdigest()[:16]
        local = cache_dir("stores") / f"{adapter_id}-{key}"
        if not (local / MANIFEST).is_file():
            self.remote.child(adapter_id).download(local)
        return local
