"""Which checkpoint of a run is safe to read.

A checkpoint is written in two steps: every rank saves into a private temporary folder, then Ray copies the
folders into the run's storage and, only after the copy finished, records the checkpoint in the run's
``checkpoint_manager_snapshot.json`` (the publication). A process killed mid-copy leaves a partial
``checkpoint_*`` folder that the snapshot never names, so readers go by the snapshot, never by folder names.
"""

from __future__ import annotations

import json
from typing import Any

from rayft.train.handoff import MODEL_DIR, STATE_FILE

SNAPSHOT = "checkpoint_manager_snapshot.json"


def is_complete(checkpoint: Any) -> bool:
    """A rayft checkpoint with a readable state file, model weights and DeepSpeed's ``latest`` tag."""
    from rayft.storage import resolve

    loc = resolve(checkpoint) if isinstance(checkpoint, str) else checkpoint
    try:
        json.loads(loc.read_text(STATE_FILE))
    except (OSError, ValueError):
        return False
    model = loc.child(MODEL_DIR)
    weights = any(n.endswith((".safetensors", ".bin")) for n in _files(model))
    return weights and loc.is_file("latest")


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest published, complete checkpoint of a Ray Train run folder (local or URI), or None."""
    from rayft.storage import resolve

    run = resolve(run_dir)
    published = _published(run)
    candidates = published if published is not None else sorted(
        (n for n in run.subdirs() if n.startswith("checkpoint_")), reverse=True)
    for name in candidates:
        if is_complete(run.child(name)):
            return run.child(name).uri()
    return None


def _published(run: Any) -> list[str] | None:
    """Checkpoint folder names the snapshot lists, newest first (None without a readable snapshot)."""
    try:
        snap = json.loads(run.read_text(SNAPSHOT))
    except (OSError, ValueError):
        return None
    names = [r.get("checkpoint_dir_name") for r in snap.get("checkpoint_results") or []]
    latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    ordered = ([latest] if latest else []) + sorted((n for n in names if n and n != latest), reverse=True)
    return ordered


def _files(loc: Any) -> list[str]:
    import pyarrow.fs as pafs

    if not loc.exists():
        return []
    return [i.base_name for i in loc.fs.get_file_info(pafs.FileSelector(loc.path)) if i.type == pafs.FileType.File]
