"""The heads of a multi-task entry (``tasks:``) as models of their own: ``<entry id>:<head>``.

A multi-task result is one store entry (one encoder, one adapter, several heads). Each head is served, listed and
evaluated under its own id, ``<entry id>:<head>``, with a manifest view that carries that head's task and labels;
loading one loads the entry and answers through that head (:func:`rayft.store.load.load_for_inference`).
Light: no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rayft.config.schema import MULTITASK
from rayft.errors import StoreError
from rayft.store.store import HEAD_SEPARATOR, Manifest

LABEL_SEPARATOR = "/"  # a multi-task run's labels are ``<head>/<label>``, heads in config order


def heads_of(tasks: list[dict[str, Any]] | None, labels: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """(name, task, labels) of every head, from a config's ``tasks`` entries and the run's qualified labels."""
    out = []
    for sub in tasks or []:
        name = sub["name"]
        own = [q.split(LABEL_SEPARATOR, 1)[1] for q in labels or [] if q.split(LABEL_SEPARATOR, 1)[0] == name]
        out.append((name, sub.get("task", "sequence_classification"), own))
    return out


def head_manifests(manifest: Manifest) -> list[Manifest]:
    """The view of each head of a multi-task entry (none for other entries)."""
    if manifest.task != MULTITASK or manifest.head is not None:
        return []
    return [_view(manifest, name, task, labels)
            for name, task, labels in heads_of(manifest.config.get("tasks"), manifest.labels)]


def head_manifest(manifest: Manifest, head: str) -> Manifest:
    """The view of head ``head`` of the multi-task entry ``manifest``.

    Raises:
        StoreError: if the entry is not multi-task, or has no such head (its heads are named).
    """
    views = {m.head: m for m in head_manifests(manifest)}
    if manifest.task != MULTITASK:
        raise StoreError(f"model {manifest.adapter_id}{HEAD_SEPARATOR}{head!s}: {manifest.adapter_id!r} is a "
                         f"{manifest.task!r} result with one head; use its id alone")
    if head not in views:
        raise StoreError(f"model {manifest.adapter_id}{HEAD_SEPARATOR}{head}: no head {head!r}; its heads: "
                         + ", ".join(f"{manifest.adapter_id}{HEAD_SEPARATOR}{h}" for h in views))
    return views[head]


def head_ids(manifest: Manifest) -> list[str]:
    return [m.adapter_id for m in head_manifests(manifest)]


def _view(manifest: Manifest, name: str, task: str, labels: list[str]) -> Manifest:
    prefix = f"{name}_"
    metrics = {f"{k.split('_', 1)[0]}_{k.split('_', 1)[1][len(prefix):]}": v for k, v in manifest.metrics.items()
               if "_" in k and k.split("_", 1)[1].startswith(prefix)}  # eval_topic_accuracy -> eval_accuracy
    return dataclasses.replace(manifest, adapter_id=f"{manifest.adapter_id}{HEAD_SEPARATOR}{name}", task=task,
                               labels=labels or None, metrics=metrics, hot_swappable=False, head=name)
