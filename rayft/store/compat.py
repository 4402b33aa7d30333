"""Can a stored result be served on a given base model? Checked from the manifest and config files only.

The checks read small JSON files (never the weights), so a server can run them on every store re-read:
base model name and weight fingerprint, the architecture family (``model_type``) of full-weight results, and
that the adapter's own peft ``task_type`` agrees with the task its manifest claims.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rayft.config.schema import MULTITASK
from rayft.errors import StoreError
from rayft.store.store import AdapterStore, Manifest

SERVABLE_TASKS = {"sequence_classification": "SEQ_CLS", "sft": "CAUSAL_LM"}  # task -> peft task_type
KINDS = ("adapter", "full", "modules", "onnx")  # modules: rayft add-on modules (bottleneck adapters) + head


class IncompatibleError(StoreError):
    """A stored result that cannot be served on the served base; ``reason`` is a stable code.

    Reasons: ``base_not_served``, ``base_mismatch``, ``architecture_mismatch`` (the result conflicts with the
    served base) and ``task_mismatch``, ``unsupported_task``, ``unsupported_kind`` (the manifest is not servable).
    """

    CONFLICTS = ("base_not_served", "base_mismatch", "architecture_mismatch")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BaseInfo:
    """A base model a server serves: its name (as manifests spell it), weight fingerprint and ``model_type``."""

    name: str
    fingerprint: str
    model_type: str | None

    @classmethod
    def of(cls, name: str) -> "BaseInfo":
        """Describe a base model by name (a local folder, a catalog name or a hub id)."""
        from rayft.models import fingerprint, resolve_model

        path = resolve_model(name)
        return cls(name, fingerprint(path), _model_type(Path(path)))


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_compatible(store: AdapterStore, manifest: Manifest, bases: dict[str, BaseInfo]) -> None:
    """Raise if ``manifest``'s result cannot be served on the bases in ``bases`` (by name).

    Raises:
        IncompatibleError: naming what differs and what was expected.
    """
    import rayft.tasks  # noqa: F401  (registers the tasks serving_task looks up)
    from rayft.tasks.base import serving_task

    mid = manifest.adapter_id
    task = serving_task(manifest.task, manifest.config)  # a DPO or distilled result serves as its routes' task
    if manifest.kind not in KINDS:
        raise IncompatibleError("unsupported_kind", f"{mid!r} has kind {manifest.kind!r}; servable kinds: "
                                                    f"{', '.join(KINDS)}")
    if task == MULTITASK:
        from rayft.store.heads import head_ids

        raise IncompatibleError("unsupported_task", f"{mid!r} is a multi-task result: each head is served under "
                                                    f"its own id: {', '.join(head_ids(manifest))}")
    if task not in SERVABLE_TASKS:
        raise IncompatibleError("unsupported_task", f"{mid!r} is a {manifest.task!r} model; servable tasks: "
                                                    f"{', '.join(SERVABLE_TASKS)}")
    if manifest.kind == "onnx" and SERVABLE_TASKS.get(manifest.task) != "SEQ_CLS":
        source = (manifest.source or {}).get("id")
        raise IncompatibleError("unsupported_kind", f"{mid!r} is an ONNX graph of a {manifest.task!r} model: "
                                "rayft serve runs ONNX graphs for classification; a causal LM's graph has no "
                                "decoding loop here (serve its merged export" +
                                (f": rayft export {source} --format merged)" if source else ")"))
    base = bases.get(manifest.base_model)
    if base is None:
        raise IncompatibleError("base_not_served", f"{mid!r} was trained on base {manifest.base_model!r}, which "
                                f"this server does not serve (served: {', '.join(sorted(bases)) or 'none'})")
    if manifest.base_fingerprint and manifest.base_fingerprint != base.fingerprint:
        raise IncompatibleError("base_mismatch", f"{mid!r} was trained on base weights with fingerprint "
                                f"{manifest.base_fingerprint}; the served {base.name!r} has {base.fingerprint}")
    folder = store.path(mid)
    if manifest.kind in ("full", "onnx"):
        found = _model_type(folder)
        if base.model_type and found and found != base.model_type:
            raise IncompatibleError("architecture_mismatch", f"{mid!r} is a {found!r} model; the served base "
                                    f"{base.name!r} is {base.model_type!r}")
        return
    try:
        task_type = json.loads((folder / "adapter_config.json").read_text()).get("task_type")
    except (OSError, ValueError, AttributeError):
        return  # unreadable adapter files fail when loaded, for this adapter alone
    expected = SERVABLE_TASKS[task]
    if task_type and task_type != expected:
        raise IncompatibleError("task_mismatch", f"{mid!r} claims task {manifest.task!r} (peft task_type "
                                f"{expected}) but its adapter_config.json has task_type {task_type!r}")
