"""What a training run hands across process boundaries, as frozen dataclasses with named fields.

- :class:`LoopConfig`: what the driver (``rayft train``, or a sweep's trial) hands every Ray Train worker.
- :class:`LoopState`: where the worker loop stands; saved with every checkpoint and read back by the run that
  restarts from it (after a lost worker, a resumed sweep, or a PBT clone).
- :class:`CheckpointState`: the checkpoint's ``rayft_state.json`` (the loop position, the report, the labels and
  the resolved experiment); it stays a JSON object on disk, built and parsed here only.

Only the standard library is imported: the Tune trial actor and the Ray Train controller unpickle the loop
config and must stay free of torch and transformers (see :mod:`rayft.train.entry`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

STATE_FILE = "rayft_state.json"  # a checkpoint's CheckpointState
MODEL_DIR = "model"  # a checkpoint's model folder (save_pretrained)


@dataclass(frozen=True)
class LoopConfig:
    """The Ray Train workers' loop config.

    Ray Train records its ``train_loop_config`` as a dict (its run state turns anything else into a string),
    so the trainer is given :meth:`to_ray` and the workers read it back with :meth:`parse`.
    """

    experiment: dict[str, Any]  # the resolved experiment as :func:`rayft.config.dump_config` writes it
    data: Any  # the PreparedData, or an ObjectRef to it in the object store
    verbose: bool = False  # rank 0 prints progress
    label: str = "train"  # prefixes printed lines; recorded in checkpoints as the run that wrote them
    trial_started_at: float | None = None  # wall clock when the enclosing Tune trial started (start-up timing)
    start_checkpoint: Any = None  # a ray.train.Checkpoint of another run to start from (PBT clone, paused trial)
    entered_at: float | None = None  # wall clock when the worker entered rayft.train.entry (start-up timing)
    progress: Any = None  # the driver's ProgressBoard actor (rayft.train.progress): rank 0 reports progress there

    @property
    def method(self) -> str:
        """The fine-tuning method's name (read without validating the experiment)."""
        return self.experiment["method"]["name"]

    def to_ray(self) -> dict[str, Any]:
        """The dict handed to Ray Train as ``train_loop_config``: one entry per field (no deep copy)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def parse(cls, config: LoopConfig | dict[str, Any]) -> LoopConfig:
        """The loop config a worker was given (as :meth:`to_ray` made it, or this object itself).

        Raises:
            TypeError: for a key that is no field (a driver and workers of different rayft versions).
        """
        return config if isinstance(config, cls) else cls(**config)


@dataclass(frozen=True)
class LoopState:
    """Where the worker loop stands. Each change makes a new state, as a checkpoint may hold any of them."""

    step: int = 0  # optimizer steps when this state was saved (0: a fresh start)
    epoch: int = 0  # the epoch being trained
    batch: int = 0  # batches of this epoch already trained on (a restart skips them)
    evals: int = 0  # evaluations made so far
    progress: float = 0.0  # epochs trained at the last evaluation, fractional
    history: tuple[dict[str, Any], ...] = ()  # the learning curve: one entry per evaluation
    trial: str = ""  # label of the run that wrote this state

    def trained(self, batch_index: int) -> LoopState:
        """After training on batch ``batch_index`` of the epoch."""
        return replace(self, batch=batch_index + 1)

    def evaluating(self, batches_per_epoch: int) -> LoopState:
        """At an evaluation: one more counted and the epochs trained so far."""
        return replace(self, evals=self.evals + 1, progress=self.epoch + self.batch / batches_per_epoch)

    def recorded(self, entry: dict[str, Any]) -> LoopState:
        """With one more point of the learning curve."""
        return replace(self, history=(*self.history, entry))

    def next_epoch(self) -> LoopState:
        return replace(self, epoch=self.epoch + 1, batch=0)

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "history": list(self.history)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoopState:
        """The loop position in a checkpoint's state (other entries ignored; missing ones at their defaults)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        return cls(**{**values, "history": tuple(values.get("history") or ())})


@dataclass(frozen=True)
class CheckpointState:
    """A checkpoint's ``rayft_state.json``: the loop position plus what exporting it needs."""

    position: LoopState
    metrics: dict[str, Any] = field(default_factory=dict)  # the report saved with the checkpoint
    labels: list[str] | None = None  # class labels (classification tasks)
    config: dict[str, Any] | None = None  # the resolved experiment (JSON)

    def to_json(self) -> dict[str, Any]:
        """The file's object: the position's entries at the top level, then metrics, labels and config."""
        return {**self.position.to_json(), "metrics": self.metrics, "labels": self.labels, "config": self.config}

    def write(self, checkpoint_dir: str) -> None:
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w") as fh:
            json.dump(self.to_json(), fh, default=float)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CheckpointState:
        return cls(LoopState.from_json(raw), raw.get("metrics") or {}, raw.get("labels"), raw.get("config"))

    @classmethod
    def read(cls, checkpoint_dir: str) -> CheckpointState:
        """Raises: OSError or ValueError for a missing or unreadable state file."""
        with open(os.path.join(checkpoint_dir, STATE_FILE)) as fh:
            return cls.from_json(json.load(fh))
