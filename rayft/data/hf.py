"""Hugging Face ``datasets`` as the loading layer for folders written by ``save_to_disk`` and for hub datasets.

- A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` is read with ``load_from_disk``.
- ``hub:<owner>/<name>`` (with ``data.hub_config`` for a dataset's config) is read with ``load_dataset`` when the
  hub can be reached; offline, the error says so and how to pass a local copy instead.

``datasets`` is imported only when one of these sources is used.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rayft.errors import DataError

HUB_PREFIX = "hub:"
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes for a DatasetDict / a Dataset
LOCAL_COPY = ("pass a local copy instead: a folder written by datasets' save_to_disk as data.source, or "
              "split files as data.splits: {train: <file>, validation: <file>, test: <file>}")


def is_hub(source: str) -> bool:
    return source.startswith(HUB_PREFIX)


def is_saved(source: str) -> bool:
    """Whether ``source`` is a folder written by ``save_to_disk``."""
    path = Path(source)
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)


def load_saved(source: str) -> Any:
    """The ``Dataset`` or ``DatasetDict`` saved in a folder (memory-mapped, not read into memory).

    Raises:
        DataError: if the folder is not readable by ``load_from_disk``.
    """
    from datasets import load_from_disk

    try:
        return load_from_disk(source)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"data.source {source!r}: cannot read as a save_to_disk folder: {exc}") from None


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE`` set, or no answer within ``timeout``), None if it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, even an error status, means the hub is reachable
    except (urllib.error.URLError, OSError) as exc:
        return f"{constants.ENDPOINT} cannot be reached ({getattr(exc, 'reason', exc)})"
    return None


def load_hub(source: str, config: str | None = None) -> Any:
    """All splits of a hub dataset (a ``DatasetDict``), ``source`` being ``hub:<owner>/<name>``.

    Raises:
        DataError: if the machine is offline or the hub has no such dataset or config.
    """
    repo = source[len(HUB_PREFIX):]
    reason = offline_reason()
    if reason:
        raise DataError(f"data.source {source!r}: the Hugging Face hub is offline from this machine ({reason}); "
                        f"{LOCAL_COPY}")
    from datasets import load_dataset

    try:
        return load_dataset(repo, config)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; the user needs the message, not the type
        raise DataError(f"data.source {source!r} (data.hub_config {config!r}): cannot load from the hub: "
                        f"{type(exc).__name__}: {exc}") from None


def open_dataset(source: str, config: str | None = None) -> Any:
    """A ``Dataset`` or ``DatasetDict`` from a save_to_disk folder or a hub id.

    Raises:
        DataError: as :func:`load_saved` and :func:`load_hub`.
    """
    return load_hub(source, config) if is_hub(source) else load_saved(source)


def split_names(obj: Any) -> list[str] | None:
    """The split names of a ``DatasetDict``; None for a single ``Dataset``."""
    from datasets import Dataset

    return None if isinstance(obj, Dataset) else list(obj)


def to_frame(dataset: Any, nrows: int | None = None) -> Any:
    """A ``Dataset`` (or its first ``nrows`` rows) as a pandas DataFrame."""
    if nrows is not None and len(dataset) > nrows:
        dataset = dataset.select(range(nrows))
    return dataset.to_pandas()
