"""Population based training (``sweep.scheduler: pbt``) over a sweep's learning-rate and schedule parameters.

PBT trains a population of trials side by side. Every ``perturbation_interval`` evaluations a trial in the bottom
quantile clones the checkpoint of a trial in the top quantile (exploit) and continues with that trial's config,
its mutable parameters perturbed (explore). Only parameters that can change mid-training without touching the
model are mutable: the learning rate, the schedule and its warmup, weight decay, gradient clipping. The
population is drawn by seeded random search over the (flat) space; the mutations are seeded too.

The Tune side — the seeded scheduler, and trials that hand Tune real checkpoints and start a clone from one —
are :mod:`rayft.sweep.pbt_scheduler` and :mod:`rayft.sweep.trial`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayft.config.schema import ExperimentConfig, SearchParam, default
from rayft.errors import FieldError
from rayft.sweep.checks import checkpoint_every_evaluation

# Parameters a trial can take over mid-training from a cloned checkpoint (the optimizer and schedule, not the model).
MUTABLE = ("train.lr", "train.scheduler", "train.warmup_ratio", "train.weight_decay", "train.max_grad_norm")
SEARCHER = "random"


def mutable_keys(cfg: ExperimentConfig) -> list[str]:
    """The space keys PBT mutates: ``sweep.pbt.mutate``, else every mutable key of the space."""
    if cfg.sweep.pbt.mutate is not None:
        return list(cfg.sweep.pbt.mutate)
    return [k for k in cfg.sweep.space if k in MUTABLE]


def hyperparam_mutations(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Tune's ``hyperparam_mutations``, nested like the trials' configs (``{"train": {"lr": ...}}``).

    A ``choice`` becomes a list (explore moves to a neighbouring value or resamples); a continuous or integer
    dimension stays a Tune domain (explore multiplies by a perturbation factor or resamples).
    """
    from rayft.sweep.space import tune_space

    out: dict[str, dict[str, Any]] = {}
    for key in mutable_keys(cfg):
        param = cfg.sweep.space[key]
        section, field = key.split(".", 1)
        out.setdefault(section, {})[field] = (list(param.choice) if param.kind == "choice"
                                              else tune_space({key: param})[section][field])
    return out


class KeepInBounds:
    """Tune's ``custom_explore_fn``: clip perturbed values into the declared range of their dimension.

    PBT multiplies continuous values by its perturbation factors, which can leave the space (a warmup ratio
    of 1.1 is not a config); a mutation is clipped to ``[low, high]`` instead. A plain class so that Tune can
    pickle it with the scheduler.
    """

    def __init__(self, space: dict[str, SearchParam]) -> None:
        self.bounds: dict[tuple[str, str], tuple[float, float, bool]] = {}
        for key, param in space.items():
            if param.kind != "choice":
                low, high = getattr(param, param.kind)
                self.bounds[tuple(key.split(".", 1))] = (low, high, param.kind == "int")

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for (section, field), (low, high, whole) in self.bounds.items():
            values = config.get(section)
            if isinstance(values, dict) and isinstance(values.get(field), (int, float)):
                value = min(max(values[field], low), high)
                values[field] = int(round(value)) if whole else value
        return config


def make_pbt(cfg: ExperimentConfig, metric: str, mode: str, max_t: int, concurrent: int | None = None) -> Any:
    """The PBT scheduler for this sweep (seeded by ``sweep.seed``); ``concurrent``: trials the cluster runs at once
    (when the whole population fits, running trials are never paused to share it).

    Raises:
        RayftError: if a trial makes too few evaluations for PBT ever to act (``perturbation_interval`` and
            ``burn_in`` against the evaluations of a full trial, known once the data is).
    """
    from rayft.errors import RayftError

    pbt = cfg.sweep.pbt
    first = max(pbt.burn_in, pbt.perturbation_interval)  # the first perturbation step; the last evaluation is none
    if first >= max_t:
        raise RayftError(f"sweep.pbt.perturbation_interval: a trial makes {max_t} evaluation(s), so PBT needs "
                         f"max(burn_in, perturbation_interval) < {max_t} to act (got burn_in {pbt.burn_in}, "
                         f"perturbation_interval {pbt.perturbation_interval}); lower them, or evaluate more often "
                         "with train.eval_every")
    import warnings

    from rayft.sweep.pbt_scheduler import SeededPBT

    # Tune suggests reusing actors under PBT; rayft must not: a trial's actor takes its Train run down with it.
    warnings.filterwarnings("ignore", message="Consider boosting PBT performance", category=UserWarning)
    return SeededPBT(
        seed=cfg.sweep.seed, time_share=concurrent is None or cfg.sweep.num_trials > concurrent,
        time_attr="training_iteration", metric=metric, mode=mode,
        perturbation_interval=pbt.perturbation_interval, burn_in_period=pbt.burn_in,
        hyperparam_mutations=hyperparam_mutations(cfg), quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability, perturbation_factors=tuple(pbt.perturbation_factors),
        custom_explore_fn=KeepInBounds({k: cfg.sweep.space[k] for k in mutable_keys(cfg)}), synch=pbt.synch)


def describe_exploits(sweep_dir: str | Path, limit: int = 10) -> str:
    """What PBT did, from the log Tune keeps in the sweep folder (``pbt_global.txt``): one line per exploit step,
    the weaker trial, the trial it cloned at which iteration, and how the mutated parameters changed."""
    import json

    from rayft.sweep.space import flat_params

    path = Path(sweep_dir) / "pbt_global.txt"
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    lines = [f"PBT: {len(steps)} exploit step{'s' if len(steps) != 1 else ''} (log: {path})"]
    policies = sorted(Path(sweep_dir).glob("pbt_policy_*.txt"))  # named pbt_policy_<trial id>.txt
    prefix = policies[0].stem[len("pbt_policy_"):].rsplit("_", 1)[0] if policies else ""

    def name(tag: str) -> str:  # Tune's experiment tag starts with the trial's index: "3_lr=0.001,..."
        index = tag.split("_", 1)[0]
        return f"{prefix}_{int(index):05d}" if prefix and index.isdigit() else tag.split("@")[0]

    for target, donor, _, donor_iter, old, new in steps[:limit]:
        before, after = flat_params(old), flat_params(new)
        changes = ", ".join(f"{k} {_short(before.get(k))} -> {_short(v)}" for k, v in after.items()
                            if before.get(k) != v)
        lines.append(f"  {name(target)} cloned {name(donor)} (at its evaluation {donor_iter}): "
                     f"{changes or 'no change'}")
    if len(steps) > limit:
        lines.append(f"  ... and {len(steps) - limit} more")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def check_pbt(raw: dict[str, Any]) -> list[FieldError]:
    """``scheduler: pbt`` against the rest of the sweep: random population, a flat space with something
    mutable, a checkpoint at every evaluation, a population of at least two."""
    sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
    if sweep.get("scheduler") != "pbt":
        return []
    space = sweep.get("space") if isinstance(sweep.get("space"), dict) else {}
    errors: list[FieldError] = []
    searcher = sweep.get("searcher", default("sweep.searcher"))
    if searcher != SEARCHER:
        errors.append(FieldError("sweep.searcher", searcher, "random with scheduler: pbt (PBT draws its population "
                                 "at random and searches by mutating it; Tune cannot pair it with a model-based "
                                 "or grid searcher)"))
    if "method.name" in space:
        errors.append(FieldError("sweep.space.method.name", space["method.name"], "no method search with scheduler: "
                                 "pbt (trials clone each other's checkpoints, so they share one flat space; search "
                                 "methods with scheduler asha, median or none)"))
    if sweep.get("methods"):
        errors.append(FieldError("sweep.methods", sweep["methods"], "no per-method spaces with scheduler: pbt "
                                 "(put the method's parameters in sweep.space as method.<param>)"))
    trials = sweep.get("num_trials", default("sweep.num_trials"))
    if isinstance(trials, int) and trials < 2:
        errors.append(FieldError("sweep.num_trials", trials, "at least 2 with scheduler: pbt (a population whose "
                                 "weaker trials clone the stronger ones)"))
    errors += checkpoint_every_evaluation(raw, "with scheduler: pbt (any evaluation may be the one a weaker "
                                              "trial clones)")
    return errors + _check_mutations(sweep, space)


def _check_mutations(sweep: dict[str, Any], space: dict[str, Any]) -> list[FieldError]:
    """``sweep.pbt.mutate`` names mutable keys of the space (or the space has one)."""
    pbt = sweep.get("pbt") if isinstance(sweep.get("pbt"), dict) else {}
    errors: list[FieldError] = []
    mutate = pbt.get("mutate")
    if not isinstance(mutate, list):
        if not any(k in MUTABLE for k in space):
            errors.append(FieldError("sweep.space", sorted(space), "with scheduler: pbt, at least one parameter PBT "
                                     f"can change mid-training: one of {', '.join(MUTABLE)}"))
        return errors
    if not mutate:
        errors.append(FieldError("sweep.pbt.mutate", mutate, "at least one parameter to mutate (or leave it unset: "
                                 "every mutable key of sweep.space)"))
    for i, key in enumerate(mutate):
        if key not in MUTABLE:
            errors.append(FieldError(f"sweep.pbt.mutate.{i}", key, "a parameter PBT can change mid-training: one of "
                                     f"{', '.join(MUTABLE)}"))
        elif key not in space:
            errors.append(FieldError(f"sweep.pbt.mutate.{i}", key, "a key of sweep.space (PBT mutates within its "
                                     f"range); the space has: {', '.join(space) or 'nothing'}"))
    return errors
