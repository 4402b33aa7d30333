"""The YAML search space → Ray Tune distributions, and sampled values → a trial's config."""

from __future__ import annotations

import copy
from typing import Any

from rayft.config.schema import ExperimentConfig, SearchParam


def tune_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    """Nested Tune param space (``{"train": {"lr": tune.loguniform(...)}}``) for OptunaSearch."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, param in space.items():
        section, field = key.split(".", 1)
        kind = param.kind
        if kind == "loguniform":
            dist = tune.loguniform(*param.loguniform)
        elif kind == "uniform":
            dist = tune.uniform(*param.uniform)
        elif kind == "int":
            low, high = param.int
            dist = tune.randint(low, high + 1)  # YAML bounds are inclusive
        else:
            dist = tune.choice(list(param.choice))
        out.setdefault(section, {})[field] = dist
    return out


def apply_sample(base: dict[str, Any], sample: dict[str, Any]) -> ExperimentConfig:
    """The trial's config: ``base`` (a dumped config) with the sampled values set."""
    from rayft.config.loader import build_config

    raw = copy.deepcopy(base)
    for section, values in sample.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
    return build_config(raw, check=False)


def flat_params(sample: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": x}}`` → ``{"train.lr": x}`` for tables and reports."""
    return {f"{s}.{k}": v for s, values in sample.items() if isinstance(values, dict) for k, v in values.items()}
