"""Sequence packing: several tokenized examples per training row, attention kept within each example.

A split is packed once, before its loader is built, with TRL's best-fit-decreasing packer
(:func:`trl.data_utils.pack_dataset`), so the packed rows (and with them the batches of every epoch, shuffled by
the sampler's seed and epoch) are the same in every run of the same data: a run resumed mid-epoch skips the batches
it had trained on and continues at the same example.

Each packed row carries, per token, its example's position ids (restarting at 0 for every example) and which
example it belongs to. Batches are handed to the model with ``position_ids`` and no ``attention_mask``: transformers
then finds the example boundaries in the position ids and builds a block-diagonal causal mask (SDPA and eager
attention; ``flash_attention_2`` runs them as variable-length sequences), so no token attends to another example.
What TRL and transformers do not do here is the batch layout for pairs (DPO's chosen and rejected responses stay in
one row) and the per-example sums a pairwise loss needs; that is written below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rayft.data.collate import IGNORE_INDEX, REJECTED

POSITIONS, EXAMPLE, SIDE = "position_ids", "example", "side"  # per-token columns of a packed split
SEGMENTS = "segments"  # per token of a packed batch: which of its sequences (-1 for padding)
PACK_UPDATES = "pack_updates"  # an online RL batch's flag: its update forwards pack prompt + completion rows


def pack_split(columns: dict[str, list[Any]], max_length: int, pairs: bool = False) -> dict[str, list[Any]]:
    """The tokenized split's examples packed into rows of at most ``max_length`` tokens.

    ``pairs``: the split holds preference pairs (chosen under the usual keys, rejected under ``rejected_``); a pair's
    two sequences go into the same row, one after the other, and rows hold up to ``2 * max_length`` tokens (the
    two rows of ``max_length`` a padded batch gives a pair).

    Returns the columns ``input_ids``, ``labels``, ``position_ids``, ``example`` (the example's row in the split)
    and ``side`` (0, or 1 for a rejected sequence), one packed row each.
    """
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    items: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], POSITIONS: [], EXAMPLE: [], SIDE: []}
    sides = ("", REJECTED) if pairs else ("",)
    for i in range(len(columns["input_ids"])):
        parts = [(columns[prefix + "input_ids"][i], columns[prefix + "labels"][i]) for prefix in sides]
        items["input_ids"].append([t for ids, _ in parts for t in ids])
        items["labels"].append([t for _, labels in parts for t in labels])
        items[POSITIONS].append([p for ids, _ in parts for p in range(len(ids))])
        items[EXAMPLE].append([i] * sum(len(ids) for ids, _ in parts))
        items[SIDE].append([s for s, (ids, _) in enumerate(parts) for _ in ids])
    packed = pack_dataset(Dataset.from_dict(items), max_length * len(sides), strategy="bfd")
    return {k: packed[k] for k in items}


def pad_packed(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of packed rows, padded at the end to the longest row.

    ``index`` lists the batch's examples (one entry per example, in order of appearance); ``segments`` numbers
    each token's sequence within the batch — an example's chosen (or only) sequence ``k`` for the ``k``-th example,
    its rejected one ``n + k`` of ``n`` examples, padding -1 — so per-sequence sums come out in the order of a
    padded batch (chosen rows first, then rejected ones). The label of each sequence's first token is masked: in
    a row of its own it is never predicted, in a packed row it would be predicted from the example before it.
    """
    longest = max(len(f["input_ids"]) for f in features)
    shape = (len(features), longest)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.arange(longest).repeat(len(features), 1)  # padding: a sequence of its own
    examples = torch.full(shape, -1, dtype=torch.long)
    sides = torch.zeros(shape, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.as_tensor(f["input_ids"])
        labels[i, :n] = torch.as_tensor(f["labels"])
        positions[i, :n] = torch.as_tensor(f[POSITIONS])
        positions[i, n:] -= n
        examples[i, :n] = torch.as_tensor(f[EXAMPLE])
        sides[i, :n] = torch.as_tensor(f[SIDE])
    labels[positions == 0] = IGNORE_INDEX
    order = list(dict.fromkeys(examples[examples >= 0].tolist()))  # examples in order of appearance
    slot = {e: k for k, e in enumerate(order)}
    segments = torch.full(shape, -1, dtype=torch.long)
    real = examples >= 0
    segments[real] = torch.as_tensor([slot[e] for e in examples[real].tolist()]) + sides[real] * len(order)
    return {"input_ids": ids, "labels": labels, POSITIONS: positions, SEGMENTS: segments,
            "index": torch.as_tensor(order, dtype=torch.long)}


def segment_sums(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """Per-sequence sums of per-token ``values`` (tokens of segment -1 are left out): ``count`` of them."""
    keep = segments >= 0
    out = torch.zeros(count, dtype=values.dtype, device=values.device)
    return out.index_add(0, segments[keep], values[keep])


def real_tokens(batch: dict[str, Any]) -> int:
    """The batch's real (non-padding) tokens: packed, padded or of a task without token ids (0)."""
    if SEGMENTS in batch:
        return int((batch[SEGMENTS] >= 0).sum())
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def training_rows(cfg: Any, data: Any) -> int:
    """The rows an epoch of ``cfg`` trains on from ``data`` (a PreparedData): its packed rows under
    ``train.packing``, else its training examples. The sweep sizes its schedulers' rungs with it."""
    if not cfg.train.packing:
        return data.size("train")
    from rayft.tasks import get_task

    return len(get_task(cfg.task.name).pack(data.splits["train"], cfg.model.max_length)["input_ids"])


@dataclass(frozen=True)
class PackedRows:
    """Right-padded rows (each row's tokens a prefix of it) laid out several to a row, for one forward.

    ``source`` says where each packed token came from: ``row * width + column`` in the padded layout of
    ``shape`` = (rows, width), -1 for padding. Position ids restart at 0 for every sequence (padding continues as a
    sequence of its own), so a forward with them and no attention mask keeps attention within each sequence.
    """

    input_ids: torch.Tensor  # [packed rows, length]
    position_ids: torch.Tensor
    source: torch.Tensor
    shape: tuple[int, int]

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token ``values`` of the packed layout (``[packed rows, n]``, ``n`` <= its length: the first ``n``
        positions) back in the padded layout ``[rows, width]``; zero where no packed token lands."""
        source = self.source[:, :values.size(1)]
        keep = source >= 0
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_put((source[keep],), values[keep]).view(self.shape)


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedRows:
    """Right-padded ``[rows, width]`` token rows packed best-fit-decreasing into rows as long as the longest one: the
    packed batch is never wider than the padded one, and has fewer rows wherever sequences are shorter.

    Written here because TRL's packer works on datasets before training, and these rows (an online RL task's
    prompt + completion) exist only inside the training step.

    Raises:
        ValueError: if a row's tokens are not a prefix of it (left padding).
    """
    lengths = attention_mask.sum(1).tolist()
    rows, width = input_ids.shape
    if any(not bool(attention_mask[r, :n].all()) for r, n in enumerate(lengths)):
        raise ValueError("pack_rows needs right-padded rows (each row's tokens first)")
    capacity = max(lengths, default=0)
    bins: list[list[int]] = []
    room: list[int] = []
    for r in sorted(range(rows), key=lambda r: -lengths[r]):
        fits = [i for i in range(len(bins)) if room[i] >= lengths[r]]
        if fits:
            best = min(fits, key=lambda i: room[i])
            bins[best].append(r)
            room[best] -= lengths[r]
        else:
            bins.append([r])
            room.append(capacity - lengths[r])
    shape = (len(bins), capacity)
    # A row's unused tail holds token 0: its positions restart, so no real token attends to it, and unpack drops it.
    ids = torch.zeros(shape, dtype=input_ids.dtype, device=input_ids.device)
    positions = torch.arange(capacity, device=input_ids.device).repeat(len(bins), 1)
    source = torch.full(shape, -1, dtype=torch.long, device=input_ids.device)
    for i, members in enumerate(bins):
        at = 0
        for r in members:
            n = lengths[r]
            ids[i, at:at + n] = input_ids[r, :n]
            positions[i, at:at + n] = torch.arange(n, device=input_ids.device)
            source[i, at:at + n] = r * width + torch.arange(n, device=input_ids.device)
            at += n
        positions[i, at:] -= at
    return PackedRows(ids, positions, source, (rows, width))
