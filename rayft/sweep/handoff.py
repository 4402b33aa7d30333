"""What a sweep hands across process boundaries, as frozen dataclasses with named fields.

- :class:`TrialSetup`: what the driver hands every trial (through ``tune.with_parameters``), the same for all;
  its :class:`TrialPlan` says how a trial deals with its scheduler.
- :class:`TrialReport`: one report of a trial's Train run, from the run's controller to the trial through the
  sweep's hub (:mod:`rayft.sweep.hub`).

Only the standard library is imported at module level: the trial actor and the Ray Train controller unpickle
these and must stay free of torch and transformers (see :mod:`rayft.train.entry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialPlan:
    """How a trial deals with its scheduler: what differs between schedulers that pause trials and the others.

    With ``pausable`` (population based training, ASHA with deferred promotion) Tune may pause a trial and restart
    it from a checkpoint, or clone another trial's: the trial hands Tune every checkpoint itself (Tune copies it
    into the trial's folder, out of reach of the Train run's retention) and starts from the one Tune restarts it
    with. Otherwise Tune gets each checkpoint's path only, with the metrics.
    """

    pausable: bool = False

    @property
    def trainable_name(self) -> str:
        """The name Tune knows the trial function by: it names the trial folders after it, and restores a sweep
        only with a trial function of the name the sweep started with."""
        return "rayft_pbt_trial" if self.pausable else "rayft_trial"

    def restart_checkpoint(self) -> Any:
        """The checkpoint Tune (re)starts the current trial from: None on a first start, or when not pausable."""
        if not self.pausable:
            return None
        from ray import tune

        return tune.get_checkpoint()

    def register(self, metrics: dict[str, Any], checkpoint: Any) -> None:
        """Hand one report of the trial's Train run to Tune (in the trial's thread); ``checkpoint``: the
        ``ray.train.Checkpoint`` reported with it, or None."""
        from ray import tune

        if checkpoint is not None or self.pausable:
            metrics["checkpoint_path"] = checkpoint.path if checkpoint else None  # read by results and exports
        handed = tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if self.pausable and checkpoint else None
        tune.report(metrics, checkpoint=handed)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep is handed; each trial applies its sampled values to ``base``."""

    base: dict[str, Any]  # the validated experiment, dumped (rayft.config.dump_config)
    data: Any  # ObjectRef of the PreparedData, tokenized once for the whole sweep
    hub: Any  # the sweep's TrialHub actor: relays reports, frees placement groups, prestarts processes
    storage: str  # folder of the trials' Train runs (a path on ``storage_filesystem``)
    worker_cpus: float  # CPUs each Train worker reserves, so that the concurrent trials fit
    plan: TrialPlan = TrialPlan()
    storage_filesystem: Any = None  # pyarrow filesystem of ``storage`` (None: local)
    warm: str | None = None  # the sweep's tag when later trials start in prestarted processes (rayft.sweep.warm)
    model_type: str = ""  # the base model's type, imported by warm processes (read once by the driver)
    private: bool = False  # Ray was started by this sweep: no autoscaler to ask


@dataclass(frozen=True)
class TrialReport:
    """One report of a trial's Train run: rank 0's metrics and the persisted checkpoint (or None)."""

    metrics: dict[str, Any]
    checkpoint: Any = None
