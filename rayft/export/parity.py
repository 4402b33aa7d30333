"""Parity at export time: an export against the PyTorch model it was made from, on the run's validation rows.

Two rules: a float32 export (``merged``, ``onnx``) must give the same outputs up to ``FP32_RTOL`` relative to the
outputs' scale (max |export - source| / max |source| over the real, unpadded positions); a quantized export
(``onnx-int8``) must score within ``INT8_POINTS`` accuracy points of the source. Accuracy is the task's
own per-unit hit rate on the gold labels of the rows: the label (sequence classification), each labelled token
(token classification), both span ends (extractive QA), each next answer token (causal LMs); rows without gold
labels (``grpo`` prompts) are scored against the source's own predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import IGNORE_INDEX
from rayft.errors import DataError, StoreError
from rayft.export.graphs import GraphSpec, model_inputs, run_torch

FP32_RTOL = 1e-4
INT8_POINTS = 1.0
BATCH = 32
Outputs = list[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Sample:
    """Collated batches of one split's first rows (inputs and gold labels)."""

    split: str
    rows: int
    batches: list[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Parity:
    """What a manifest records under ``parity``."""

    rule: str  # "fp32" or "int8"
    split: str
    rows: int
    max_rel_diff: float
    accuracy_source: float
    accuracy_export: float
    agreement: float  # share of units where export and source predict the same
    passed: bool
    tolerance: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"{self.rule} parity on {self.rows} {self.split} rows: max relative logit difference "
                f"{self.max_rel_diff:.2e}, accuracy {self.accuracy_source:.4f} -> {self.accuracy_export:.4f}, "
                f"agreement {self.agreement:.4f} ({'passed' if self.passed else 'FAILED'}: {self.tolerance})")


def sample(cfg: ExperimentConfig, limit: int, split: str | None = None) -> Sample:
    """The first ``limit`` rows of the run's validation split (its test split, else train, when it has none).

    Raises:
        StoreError: if the run's data cannot be read here (naming its source).
    """
    from rayft.data import prepare_data
    from rayft.data.collate import Columnar
    from rayft.tasks import get_task

    try:
        data = prepare_data(cfg)
    except (DataError, OSError) as exc:
        raise StoreError(f"parity needs the run's validation data ({cfg.data.source or 'data.splits'}), which "
                         f"could not be read here: {exc}") from None
    order = [split] if split else ["validation", "test", "train"]
    name = next((s for s in order if data.size(s)), None)
    if name is None:
        raise StoreError(f"parity needs rows of the run's data; split {order[0]!r} is empty")
    rows = Columnar(data.splits[name])
    n = min(limit, len(rows))
    task = get_task(cfg.task.name)
    batches = [task.collate([rows[i] for i in range(s, min(s + BATCH, n))], data.pad_id) for s in range(0, n, BATCH)]
    return Sample(name, n, batches)


def outputs(run: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], sample_: Sample,
            spec: GraphSpec) -> Outputs:
    """``run`` (a model call) on every batch's model inputs."""
    return [{k: v.float() for k, v in run(model_inputs(b, spec)).items()} for b in sample_.batches]


def torch_outputs(model: Any, sample_: Sample, spec: GraphSpec) -> Outputs:
    """A PyTorch model's outputs on the sample."""
    model.eval()
    return outputs(lambda inputs: run_torch(model, inputs, spec), sample_, spec)


def _units(spec: GraphSpec, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(predictions, gold or None, which units count) of one batch, one unit per label the task scores."""
    mask = batch["attention_mask"].bool()
    if "start_logits" in out:
        ends = [out[k].masked_fill(~mask, -1e4).argmax(-1) for k in ("start_logits", "end_logits")]
        gold = (torch.stack([batch["start_positions"], batch["end_positions"]], -1)
                if "start_positions" in batch else None)
        return torch.stack(ends, -1), gold, torch.ones(mask.size(0), dtype=torch.bool)
    pred, gold = out["logits"].argmax(-1), batch.get("labels")
    if spec.causal:
        pred, gold, valid = pred[:, :-1], gold[:, 1:] if gold is not None else None, mask[:, 1:]
    else:
        valid = mask if spec.per_token else torch.ones(mask.size(0), dtype=torch.bool)
    if gold is not None:
        valid = valid & (gold != IGNORE_INDEX)
    return pred, gold, valid


def accuracy(spec: GraphSpec, outs: Outputs, sample_: Sample, reference: Outputs | None = None) -> float:
    """The task's accuracy of ``outs`` on the sample's gold labels, or on ``reference``'s predictions when given
    (also for rows without gold labels)."""
    hits = total = 0
    for i, (out, batch) in enumerate(zip(outs, sample_.batches)):
        pred, gold, valid = _units(spec, out, batch)
        if reference is not None or gold is None:
            gold = _units(spec, (reference if reference is not None else outs)[i], batch)[0]
        hit = (pred == gold).all(-1) if "start_logits" in out else pred == gold
        hits += int(hit[valid].sum())
        total += int(valid.sum())
    return hits / max(total, 1)


def _unlabelled(spec: GraphSpec, ref: Outputs, sample_: Sample) -> bool:
    return all(_units(spec, r, b)[1] is None for r, b in zip(ref, sample_.batches))


def max_rel_diff(spec: GraphSpec, ref: Outputs, got: Outputs, sample_: Sample) -> float:
    """max |got - ref| / max |ref| over the real (unpadded) positions of every output."""
    diff = scale = 0.0
    for r, g, batch in zip(ref, got, sample_.batches):
        mask = batch["attention_mask"].bool() if spec.per_token else torch.ones(batch["input_ids"].size(0),
                                                                                dtype=torch.bool)
        for name in spec.outputs:
            a, b = r[name][mask], g[name][mask]
            diff, scale = max(diff, float((a - b).abs().max())), max(scale, float(a.abs().max()))
    return diff / max(scale, 1e-12)


def check(rule: str, spec: GraphSpec, ref: Outputs, got: Outputs, sample_: Sample) -> Parity:
    """Compare an export's outputs with its source's under ``rule`` ("fp32" or "int8")."""
    rel = max_rel_diff(spec, ref, got, sample_)
    agree = accuracy(spec, got, sample_, reference=ref)
    acc_src, acc_exp = accuracy(spec, ref, sample_), accuracy(spec, got, sample_)
    if acc_src == 1.0 and _unlabelled(spec, ref, sample_):  # no gold labels: scored against the source
        acc_exp = agree
    if rule == "fp32":
        passed, tol = rel <= FP32_RTOL, f"relative logit difference <= {FP32_RTOL:g}"
    else:
        passed, tol = abs(acc_exp - acc_src) * 100 <= INT8_POINTS + 1e-9, f"accuracy within {INT8_POINTS:g} point"
    return Parity(rule, sample_.split, sample_.rows, rel, acc_src, acc_exp, agree, passed, tol)
