"""Export formats: what each writes, how it is read back, and which methods and tasks it can take.

``adapter`` is the store's own format (a peft folder or a full model folder, :mod:`rayft.store.export`); the
formats here are made from such an entry:

- ``merged``: the adapter folded into the base weights (peft's ``merge_and_unload``), a plain transformers folder
  (manifest kind ``full``: everything that loads and serves full models takes it as it is).
- ``onnx``: an ONNX graph of the merged model (:mod:`rayft.export.graphs`) with its tokenizer and config.
- ``onnx-int8``: that graph with dynamic int8 weights (onnxruntime's ``quantize_dynamic``).
- ``gguf``: a merged Llama-family causal LM as one float32 GGUF file (:mod:`rayft.export.gguf_file`).

Each format registers itself (:data:`FORMATS`); :func:`problem` says why a stored result cannot take a format.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from rayft.export.graphs import GRAPH_FILE, GRAPHS, GraphSpec, OnnxModel, quantize_int8, write_graph
from rayft.registry import Registry
from rayft.store.store import Manifest

ADAPTER = "adapter"
PROMPT_LEARNING = ("its virtual tokens (prefix key/values) are inputs of the model, not weights: there is nothing to "
                   "fold into the base and no fixed graph of it")
QUANTIZED = ("its base runs in 4-bit NF4 (bitsandbytes): folding the adapter re-quantizes those weights, so "
             "neither a merged folder nor a graph would give what was trained")
ADDED_LAYERS = "its bottleneck modules are layers of their own: there is no base weight to fold them into"


class ExportFormat(ABC):
    """One export format. ``kind`` is the manifest kind of its entries; ``rule`` the parity rule it must meet
    (``fp32`` or ``int8``, see :mod:`rayft.export.parity`); ``graph`` whether it needs a task's ONNX graph."""

    name: str
    kind: str
    rule: str = "fp32"
    graph: bool = False
    causal_only: bool = False
    unsupported_methods: dict[str, str] = {**{m: PROMPT_LEARNING for m in ("prompt", "prefix", "ptuning")},
                                           "qlora": QUANTIZED}

    @abstractmethod
    def write(self, model: Any, tokenizer: Any, example: dict[str, Any], spec: GraphSpec, dst: Path) -> None:
        """Write the merged PyTorch ``model`` in this format into the empty folder ``dst``."""

    @abstractmethod
    def load(self, folder: Path, task: Any, cfg: Any, labels: list[str] | None) -> Any:
        """The written entry as a callable model (for parity, serving and in-process use)."""


FORMATS: Registry[ExportFormat] = Registry("export format")


def register_format(fmt: ExportFormat) -> ExportFormat:
    return FORMATS.register(fmt.name, fmt)


def names() -> list[str]:
    """Every format ``rayft export --format`` takes, the store's own first."""
    return [ADAPTER, *FORMATS.names()]


def entry_format(manifest: Manifest) -> str:
    """An entry's format: ``adapter`` (peft folder or add-on modules), ``full``, or the export format it records."""
    return manifest.format or ("full" if manifest.kind == "full" else ADAPTER)


def problem(manifest: Manifest, name: str) -> str | None:
    """Why the stored result ``manifest`` cannot be exported as ``name``, or None when it can."""
    made = entry_format(manifest)
    if manifest.head is not None:
        return (f"{manifest.adapter_id!r} is one head of a multi-task entry, which exports whole: "
                f"rayft export {manifest.adapter_id.split(':')[0]} --format adapter")
    if made not in (ADAPTER, "full"):
        return f"{manifest.adapter_id!r} is itself a {made} export; export from its source instead"
    if name == ADAPTER:
        return None
    fmt = FORMATS.get(name)
    why = fmt.unsupported_methods.get(manifest.method)
    if why is None and name == "merged" and manifest.kind == "modules":
        why = ADDED_LAYERS
    if why is not None:
        return f"method {manifest.method!r} cannot be exported as {name}: {why}"
    if manifest.task not in GRAPHS:
        return f"task {manifest.task!r} has no export of its outputs (tasks with one: {', '.join(GRAPHS)})"
    if fmt.causal_only and not GRAPHS[manifest.task].causal:
        return f"{name} holds causal LMs; {manifest.adapter_id!r} is a {manifest.task!r} model"
    return None


def supported(manifest: Manifest) -> list[str]:
    """The formats ``manifest``'s result can be exported as."""
    return [name for name in names() if problem(manifest, name) is None]


class Merged(ExportFormat):
    name = "merged"
    kind = "full"

    def write(self, model: Any, tokenizer: Any, example: dict[str, Any], spec: GraphSpec, dst: Path) -> None:
        model.save_pretrained(dst)
        tokenizer.save_pretrained(dst)

    def load(self, folder: Path, task: Any, cfg: Any, labels: list[str] | None) -> Any:
        return task.build_model(str(folder), cfg, labels).eval()


class Onnx(ExportFormat):
    name = "onnx"
    kind = "onnx"
    graph = True

    def write(self, model: Any, tokenizer: Any, example: dict[str, Any], spec: GraphSpec, dst: Path) -> None:
        self.write_graph(model, example, spec, dst / GRAPH_FILE)
        model.config.save_pretrained(dst)  # labels (id2label) and architecture, for readers of the folder
        tokenizer.save_pretrained(dst)

    def write_graph(self, model: Any, example: dict[str, Any], spec: GraphSpec, path: Path) -> None:
        write_graph(model, example, spec, path)

    def load(self, folder: Path, task: Any, cfg: Any, labels: list[str] | None) -> Any:
        return OnnxModel(folder)


class OnnxInt8(Onnx):
    name = "onnx-int8"
    rule = "int8"

    def write_graph(self, model: Any, example: dict[str, Any], spec: GraphSpec, path: Path) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="rayft-onnx-"))
        try:
            write_graph(model, example, spec, scratch / GRAPH_FILE)
            quantize_int8(scratch / GRAPH_FILE, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class Gguf(ExportFormat):
    name = "gguf"
    kind = "gguf"
    causal_only = True

    def write(self, model: Any, tokenizer: Any, example: dict[str, Any], spec: GraphSpec, dst: Path) -> None:
        from rayft.export.gguf_file import GGUF_FILE, write_gguf

        model.config.save_pretrained(dst)
        tokenizer.save_pretrained(dst)
        write_gguf(model, dst, dst / GGUF_FILE)

    def load(self, folder: Path, task: Any, cfg: Any, labels: list[str] | None) -> Any:
        from rayft.export.gguf_file import read_gguf

        return read_gguf(folder)


for _fmt in (Merged(), Onnx(), OnnxInt8(), Gguf()):
    register_format(_fmt)
