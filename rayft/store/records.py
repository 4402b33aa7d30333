"""Serving records kept next to the adapters: aliases (``production`` → an adapter id) and unregistered ids.

Layout (hidden folders, so they never collide with adapter ids, which start with a letter or digit)::

    STORE/.serving/aliases/<alias>.json    {"alias", "target", "previous", "updated"}
    STORE/.serving/unregistered/<id>       present while <id> is withdrawn from serving

Every write goes to a temporary file that is then renamed over the old one, so a reader (another gateway
replica, ``rayft models``) sees either the old record or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rayft.errors import StoreError
from rayft.store.store import AdapterStore, validate_id, validate_ref

RECORDS_DIR = ".serving"


def _dir(store: AdapterStore, kind: str) -> Path:
    return store.root / RECORDS_DIR / kind


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def aliases(store: AdapterStore) -> dict[str, str]:
    """Every alias and the adapter id it points at (unreadable records are skipped)."""
    folder = _dir(store, "aliases")
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            out[validate_id(path.stem)] = validate_ref(record["target"])  # a head of a multi-task entry too
        except (OSError, ValueError, KeyError, TypeError, StoreError):
            continue
    return out


def alias_record(store: AdapterStore, alias: str) -> dict[str, Any] | None:
    """The stored record of one alias, or None."""
    path = _dir(store, "aliases") / f"{validate_id(alias)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def set_alias(store: AdapterStore, alias: str, target: str) -> dict[str, Any]:
    """Point ``alias`` at ``target`` (replacing any previous target) and return the new record.

    Raises:
        StoreError: if either name is invalid or ``alias`` is the id of a stored adapter.
    """
    validate_id(alias), validate_ref(target)
    if store.exists(alias):
        raise StoreError(f"alias {alias!r} is the id of a stored model; pick another alias name")
    previous = (alias_record(store, alias) or {}).get("target")
    record = {"alias": alias, "target": target, "previous": previous,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_atomic(_dir(store, "aliases") / f"{alias}.json", json.dumps(record, indent=2))
    return record


def remove_alias(store: AdapterStore, alias: str) -> bool:
    """Delete an alias; False if there was none."""
    path = _dir(store, "aliases") / f"{validate_id(alias)}.json"
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def unregistered(store: AdapterStore) -> set[str]:
    """Ids withdrawn from serving (their folders stay in the store)."""
    folder = _dir(store, "unregistered")
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


def set_registered(store: AdapterStore, adapter_id: str, registered: bool) -> None:
    """Withdraw ``adapter_id`` from serving (``registered=False``) or serve it again."""
    path = _dir(store, "unregistered") / validate_id(adapter_id)
    if registered:
        path.unlink(missing_ok=True)
    else:
        _write_atomic(path, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def listing(store: AdapterStore) -> list[str]:
    """One tab-separated line per stored model (id, kind, method, task, base, main scores, whether withdrawn)
    and per alias, as ``rayft models`` prints them."""
    withdrawn = unregistered(store)
    lines = []
    for m in store.list():
        score = {k: round(v, 4) for k, v in m.metrics.items() if k.startswith(("eval_acc", "test_acc", "eval_loss"))}
        note = "\tunregistered" if m.adapter_id in withdrawn else ""
        made = f"\tfrom={(m.source or {}).get('id') or (m.source or {}).get('path')}" if m.source else ""
        note += "\tDRIFT (failed parity)" if m.drift else ""
        lines.append(f"{m.adapter_id}\t{m.format or m.kind}\t{m.method}\t{m.task}\tbase={m.base_model}\t{score}"
                     f"{made}{note}")
    return lines + [f"{alias}\talias -> {target}" for alias, target in aliases(store).items()]
