"""Multi-task training (``tasks:``): several tasks, each with its own data, labels and head, on one base model and
one method.

Each task's data is read, split and tokenized by its own task (:func:`prepare_multitask`); the splits are put end
to end with a ``task`` column (the head's index) and ``head_task`` (the head's task). Batches come from one task
each, drawn by ``mix`` (:mod:`rayft.data.mixing`); the model is :class:`~rayft.tasks.multitask_model.MultiTaskModel`.
Evaluation runs each head through its task's own evaluation and reports ``<head>_<metric>`` for every metric, the
mean ``loss``, and ``score``: the mean of each head's main metric (accuracy, entity F1, answer F1), which a sweep
optimises by default.

Labels travel as one list of ``<head>/<label>`` names (a run's and a stored entry's ``labels``), split per head by
:func:`head_specs`, so checkpoints and manifests need no field of their own.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from rayft.config.schema import MULTITASK, ExperimentConfig
from rayft.tasks.base import Task, get_task, register_task
from rayft.tasks.multitask_model import HeadSpec, HeadView

PROMPT_LEARNING = ("its virtual tokens are prepended to every task's input: the token-level and span heads would "
                   "no longer line up with the words")


def head_specs(cfg: ExperimentConfig, labels: list[str] | None) -> list[HeadSpec]:
    """The heads of a multi-task config, with their labels from the run's qualified ``<head>/<label>`` list."""
    from rayft.store.heads import heads_of

    tasks = [t.model_dump(mode="json") for t in cfg.tasks or []]
    return [HeadSpec(name, task, tuple(own)) for name, task, own in heads_of(tasks, labels)]


def unwrap(model: Any) -> Any:
    """The :class:`MultiTaskModel` inside a DeepSpeed engine and/or a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_view(model: Any, index: int) -> HeadView:
    return HeadView(model, index, unwrap(model).specs[index])


def main_metric(task: str) -> str:
    return get_task(task).default_metric.removeprefix("eval_")


class MultiTask(Task):
    name = MULTITASK
    peft_task_type = "SEQ_CLS"  # peft's wrapper that trains and saves modules named ``classifier``: every head
    metrics = ("loss", "score")
    default_metric = "eval_score"
    default_mode = "max"
    roles: dict[str, str] = {}
    default_columns: dict[str, str] = {}
    unsupported_methods = {m: PROMPT_LEARNING for m in ("prefix", "prompt", "ptuning")}

    def metric_names(self, raw: dict[str, Any]) -> tuple[str, ...]:
        """``loss``, ``score`` and ``<head>_<metric>`` for every head of the raw config's ``tasks``."""
        from rayft.tasks import TASKS

        out = list(self.metrics)
        for sub in raw.get("tasks") or []:
            if isinstance(sub, dict) and sub.get("task", "sequence_classification") in TASKS:
                out += [f"{sub.get('name')}_{m}" for m in TASKS.get(sub.get("task", "sequence_classification")).metrics]
        return tuple(out)

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        raise TypeError("multi-task data is tokenized per task: rayft.tasks.multitask.prepare_multitask")

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        from rayft.tasks.multitask_model import build

        return build(path, head_specs(cfg, labels))

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        """One task's batch by that task's collator, plus its ``task`` (the head index, per row)."""
        first = features[0]
        rows = [{k: v for k, v in f.items() if v is not None and k not in ("task", "head_task")} for f in features]
        batch = get_task(first["head_task"]).collate(rows, pad_id)
        batch["task"] = torch.full((len(features),), int(first["task"]), dtype=torch.long)
        return batch

    def sampler(self, columns: dict[str, list[Any]], cfg: ExperimentConfig, rank: int, world: int, *,
                train: bool) -> torch.utils.data.Sampler:
        from rayft.data.mixing import TaskMixSampler, mix_probabilities

        heads = len(cfg.tasks or [])
        groups: list[list[int]] = [[] for _ in range(heads)]
        for i, t in enumerate(columns["task"]):
            groups[t].append(i)
        mix = cfg.mix
        weights = [mix.weights[t.name] for t in cfg.tasks] if mix is not None and mix.weights else None
        probs = mix_probabilities([len(g) for g in groups], mix.temperature if mix else 1.0, weights)
        batch = cfg.train.batch_size if train else cfg.train.eval_batch_size
        return TaskMixSampler(groups, probs, batch, rank, world, cfg.train.seed, train=train)

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        index = int(batch["task"][0])
        view = head_view(model, index)
        part = get_task(view.spec.task).eval_batch(view, {k: v for k, v in batch.items() if k != "task"})
        return {"head": index, "name": view.spec.name, "task": view.spec.task, "part": part}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        return self.finish_eval_columns(parts, {})

    def finish_eval_columns(self, parts: list[dict[str, Any]], columns: dict[str, list[Any]]) -> dict[str, float]:
        by_head: dict[int, list[dict[str, Any]]] = {}
        for p in parts:
            by_head.setdefault(p["head"], []).append(p)
        out: dict[str, float] = {}
        losses, mains = [], []
        for index in sorted(by_head):
            group = by_head[index]
            name, task = group[0]["name"], group[0]["task"]
            metrics = get_task(task).finish_eval_columns([p["part"] for p in group], columns)
            out.update({f"{name}_{k}": v for k, v in metrics.items()})
            losses.append(metrics["loss"])
            mains.append(metrics[main_metric(task)])
        out["loss"] = sum(losses) / max(len(losses), 1)
        out["score"] = sum(mains) / max(len(mains), 1)
        return out


def prepare_multitask(cfg: ExperimentConfig, model_path: str) -> Any:
    """Each task's data prepared by its own task (:func:`rayft.data.prepare.prepare_data` on its single-task
    config), put end to end per split.

    Raises:
        DataError: a task's data problem, naming the task (``tasks.i``).
    """
    from rayft.data.prepare import PreparedData, prepare_data
    from rayft.errors import DataError
    from rayft.store.heads import LABEL_SEPARATOR

    start = time.perf_counter()
    parts = []
    for i, sub in enumerate(cfg.tasks or []):
        try:
            parts.append(prepare_data(cfg.single_task(i), model_path))
        except DataError as exc:
            raise DataError(f"tasks.{i} ({sub.name}): {exc}", field=f"tasks.{i}.{exc.field}",
                            value=exc.value) from None
    splits: dict[str, dict[str, list[Any]]] = {}
    for name in ("train", "validation", "test"):
        present = [(i, p.splits[name]) for i, p in enumerate(parts) if p.size(name)]
        if present:
            splits[name] = _concat(cfg, present)
    labels = [f"{sub.name}{LABEL_SEPARATOR}{label}" for sub, p in zip(cfg.tasks or [], parts) for label in p.labels or []]
    sizes = {name: sum(p.raw_sizes.get(name, 0) for p in parts) for name in ("train", "validation", "test")}
    lengths = [len(x) for x in splits["train"]["input_ids"]]
    return PreparedData(
        model_path=model_path, labels=labels, columns={}, splits=splits, raw_sizes=sizes, pad_id=parts[0].pad_id,
        seconds=time.perf_counter() - start,
        stats={"mean_train_tokens": sum(lengths) / max(len(lengths), 1), "max_train_tokens": max(lengths, default=0),
               "lengths": {f"{sub.name} (max_length {sub.max_length or cfg.model.max_length}) {k}": v
                           for sub, p in zip(cfg.tasks or [], parts) for k, v in p.stats["lengths"].items()},
               "tasks": {sub.name: {k: p.size(k) for k in ("train", "validation", "test")}
                         for sub, p in zip(cfg.tasks or [], parts)}},
    )


def _concat(cfg: ExperimentConfig, present: list[tuple[int, dict[str, list[Any]]]]) -> dict[str, list[Any]]:
    """Several tasks' columns end to end; a column one task lacks is None in its rows."""
    names = sorted({k for _, cols in present for k in cols})
    out: dict[str, list[Any]] = {k: [] for k in (*names, "task", "head_task")}
    for i, cols in present:
        n = len(next(iter(cols.values())))
        for k in names:
            out[k].extend(cols.get(k, [None] * n))
        out["task"].extend([i] * n)
        out["head_task"].extend([cfg.tasks[i].task] * n)
    return out


TASK = register_task(MultiTask())
