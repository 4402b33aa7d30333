"""``rayft export SOURCE --format F``: one store entry in format F, checked against its source before it is written.

SOURCE is a store id, or a sweep, run or checkpoint folder (exported first into a scratch store, so only the
requested entry lands in the user's store). The entry is written in a scratch folder, read back and compared with
the PyTorch model it came from (:mod:`rayft.export.parity`), and moved into the store in one rename
(:meth:`rayft.store.AdapterStore.put`): a failure at any step leaves no entry behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rayft.errors import RayftError, StoreError
from rayft.export import formats, parity
from rayft.export.graphs import GRAPHS, model_inputs
from rayft.store.store import AdapterStore, Manifest, validate_id

DEFAULT_ROWS = 256


class UnsupportedFormatError(StoreError):
    """A format the source's method or task cannot be exported as; the message names the formats that work."""


class ParityError(RayftError):
    """An export whose outputs drifted from its source beyond the rule (not written without ``--allow-drift``)."""

    exit_code = 1


@dataclass(frozen=True)
class ExportRequest:
    """What ``rayft export`` was asked for."""

    source: str
    format: str = formats.ADAPTER
    adapter_id: str | None = None
    overwrite: bool = False
    prune: float | None = None
    allow_drift: bool = False
    parity_rows: int = DEFAULT_ROWS
    trial: str | None = None


@dataclass(frozen=True)
class Source:
    """The stored result an export is made from, and where it came from."""

    store: AdapterStore
    manifest: Manifest
    origin: dict[str, Any]


def check_request(req: ExportRequest) -> None:
    """Reject a request whose options do not fit together, before any work.

    Raises:
        RayftError: for an unknown format, or ``--prune``/``--allow-drift`` on the adapter format.
    """
    from rayft.export.prune import check_fraction

    if req.format not in formats.names():
        raise RayftError(f"--format {req.format!r} is not a format; expected one of {', '.join(formats.names())}")
    if req.format == formats.ADAPTER and (req.prune is not None or req.allow_drift):
        raise RayftError("--prune and --allow-drift apply to merged, onnx and onnx-int8 exports, not --format adapter")
    if req.prune is not None:
        check_fraction(req.prune)
    if req.parity_rows < 1:
        raise RayftError(f"--parity-rows: expected at least 1 row, got {req.parity_rows}")


@contextlib.contextmanager
def open_source(store: AdapterStore, source: str, trial: str | None = None) -> Iterator[Source]:
    """The stored result SOURCE names: an entry of ``store``, else a sweep/run/checkpoint exported to a scratch store.

    Raises:
        StoreError: if SOURCE is neither an entry of the store nor an existing folder.
    """
    from rayft.store.select import export_one

    if store.exists(source) and not Path(source).exists():
        m = store.manifest(source)
        yield Source(store, m, {"id": m.adapter_id, "format": formats.entry_format(m), "created": m.created})
        return
    if "://" not in source and not Path(source).exists():
        raise StoreError(f"SOURCE {source!r} is neither an entry of store {store.root} nor a sweep, run or "
                         "checkpoint folder")
    with tempfile.TemporaryDirectory(prefix="rayft-export-") as tmp:
        scratch = AdapterStore(tmp)
        m = export_one(source, scratch, trial=trial)
        yield Source(scratch, m, {"path": source, "format": formats.entry_format(m), "sweep_id": m.sweep_id,
                                  "trial_id": m.trial_id})


def export_entry(store: AdapterStore, req: ExportRequest, log: Any = None) -> Manifest:
    """Write one entry of ``req.format`` made from ``req.source`` into ``store`` (see the module docstring).

    Raises:
        RayftError: for bad options; StoreError for a missing source or a taken id;
        UnsupportedFormatError naming the formats that work; ParityError when parity fails without ``allow_drift``.
    """
    from rayft.store.select import export_one

    check_request(req)
    if req.format == formats.ADAPTER:
        if store.exists(req.source) and not Path(req.source).exists():
            raise StoreError(f"SOURCE {req.source!r} is already an entry of {store.root}; --format adapter exports "
                             "sweeps, runs and checkpoints")
        return export_one(req.source, store, trial=req.trial, adapter_id=req.adapter_id, overwrite=req.overwrite)
    with open_source(store, req.source, req.trial) as src:
        target = validate_id(req.adapter_id or f"{src.manifest.adapter_id}-{req.format}")
        if store.exists(target) and not req.overwrite:
            raise StoreError(f"entry {target!r} already exists in {store.root}; pass --overwrite to replace it")
        why = formats.problem(src.manifest, req.format)
        if why is not None:
            raise UnsupportedFormatError(f"--format {req.format}: {why}; formats that work for "
                                         f"{src.manifest.adapter_id!r}: {', '.join(formats.supported(src.manifest))}")
        return _export(store, src, req, target, log or _stderr)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def merged_model(model: Any) -> Any:
    """The PyTorch model with a peft adapter folded into its base weights (``merge_and_unload``), answering as the
    adapter did for every input."""
    import torch
    from peft import PeftModel, PeftModelForQuestionAnswering

    if not isinstance(model, PeftModel):
        return model
    # peft's QA wrapper drops token_type_ids: such an adapter trained and answers with segment 0 at every position.
    # Segment 0's embedding copied over the others makes the merged model answer the same, whatever it is fed.
    one_segment = isinstance(model, PeftModelForQuestionAnswering)
    merged = model.merge_and_unload()
    for module in merged.modules() if one_segment else ():
        table = getattr(module, "token_type_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            with torch.no_grad():
                table.weight[1:] = table.weight[0]
    return merged


def _export(store: AdapterStore, src: Source, req: ExportRequest, target: str, log: Any) -> Manifest:
    from rayft.export.prune import prune
    from rayft.store.load import load_for_inference, manifest_config
    from rayft.tasks import get_task

    fmt, spec, cfg = formats.FORMATS.get(req.format), GRAPHS[src.manifest.task], manifest_config(src.manifest)
    task = get_task(src.manifest.task)
    model, tokenizer, _ = load_for_inference(src.store, src.manifest.adapter_id)
    rows = parity.sample(cfg, req.parity_rows)
    reference = parity.torch_outputs(model, rows, spec)
    model = merged_model(model)
    pruning = None
    if req.prune is not None:
        pruning = prune(model, req.prune)
        pruned = parity.torch_outputs(model, rows, spec)
        before, after = parity.accuracy(spec, reference, rows), parity.accuracy(spec, pruned, rows)
        pruning.update(accuracy_before=before, accuracy_after=after, accuracy_change=after - before,
                       rows=rows.rows, split=rows.split)
        log(f"pruned {pruning['sparsity']:.1%} of {pruning['layers']} linear layers' weights (unstructured): "
            f"accuracy {before:.4f} -> {after:.4f} ({(after - before) * 100:+.2f} points)")
        reference = pruned  # the export is checked against the model it was written from
    with tempfile.TemporaryDirectory(prefix=f".{target}.", dir=_scratch_parent(store)) as tmp:
        folder = Path(tmp) / "entry"
        folder.mkdir()
        fmt.write(model, tokenizer, model_inputs(rows.batches[0], spec), spec, folder)
        exported = fmt.load(folder, task, cfg, src.manifest.labels)
        result = parity.check(fmt.rule, spec, reference, parity.torch_outputs(exported, rows, spec), rows)
        del exported  # an onnxruntime session holds the graph file open
        log(result.describe())
        if not result.passed and not req.allow_drift:
            raise ParityError(f"{req.format} export of {src.manifest.adapter_id!r} failed parity: {result.describe()}; "
                              "nothing was written (pass --allow-drift to write it flagged)")
        if not result.passed:
            log(f"WARNING: {target!r} DRIFTS from its source beyond the parity rule; written with drift=true "
                "because of --allow-drift")
        manifest = _manifest(src, fmt, target, result, pruning, folder)
        store.put(folder, manifest, overwrite=req.overwrite)
    return manifest


def _scratch_parent(store: AdapterStore) -> str | None:
    """Write next to a local store (the final move is then a rename on one disk); anywhere for a remote one."""
    if store.remote:
        return None
    Path(store.root).mkdir(parents=True, exist_ok=True)
    return str(store.root)


def _manifest(src: Source, fmt: formats.ExportFormat, target: str, result: parity.Parity,
              pruning: dict[str, Any] | None, folder: Path) -> Manifest:
    import json

    architecture = None
    if (folder / "config.json").is_file():
        architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or [None])[0]
    origin = {**src.origin, "method": src.manifest.method, "kind": src.manifest.kind}
    return dataclasses.replace(
        src.manifest, adapter_id=target, kind=fmt.kind, format=fmt.name, hot_swappable=False,
        source={k: v for k, v in origin.items() if v is not None}, parity=result.to_dict(), drift=not result.passed,
        pruning=pruning, architecture=architecture or src.manifest.architecture,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
