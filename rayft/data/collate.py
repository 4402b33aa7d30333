"""Collators: dynamic padding to the longest sequence of each batch."""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


def pad_batch(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` (and token-level ``labels``) to the batch's longest sequence.

    Sequence-level labels (ints) become a 1-D tensor; token-level labels (lists) are padded with
    ``IGNORE_INDEX`` so padding never counts in the loss. Extra keys such as ``index`` pass through.
    """
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
    batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in features[0]:
        tt = torch.zeros_like(ids)
        for i, f in enumerate(features):
            tt[i, : len(f["token_type_ids"])] = torch.as_tensor(f["token_type_ids"], dtype=torch.long)
        batch["token_type_ids"] = tt
    if "labels" in features[0]:
        first = features[0]["labels"]
        if isinstance(first, (list, tuple)):
            labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.as_tensor(f["labels"], dtype=torch.long)
        else:
            labels = torch.as_tensor([f["labels"] for f in features], dtype=torch.long)
        batch["labels"] = labels
    if "index" in features[0]:
        batch["index"] = torch.as_tensor([f["index"] for f in features], dtype=torch.long)
    return batch


class Columnar(torch.utils.data.Dataset):
    """A map-style dataset over a dict of equal-length columns (the tokenized split)."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns
        self._n = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {k: v[i] for k, v in self.columns.items()}
        row["index"] = i
        return row


REJECTED = "rejected_"


def pad_pairs(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Preference pairs as one padded batch of ``2B`` rows: the B chosen sequences, then the B rejected ones.

    Each feature holds the chosen side under the usual keys (``input_ids``, ``labels``, ``token_type_ids``) and the
    rejected side under the same keys prefixed ``rejected_``. ``index`` keeps one entry per pair.
    """
    keys = ("input_ids", "labels", "token_type_ids")
    chosen = [{k: f[k] for k in keys if k in f} for f in features]
    rejected = [{k: f[REJECTED + k] for k in keys if REJECTED + k in f} for f in features]
    batch = pad_batch(chosen + rejected, pad_id)
    if "index" in features[0]:
        batch["index"] = torch.as_tensor([f["index"] for f in features], dtype=torch.long)
    return batch
