"""Load an experiment YAML, apply ``key=value`` overrides and validate everything at once."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from rayft.config.schema import ExperimentConfig
from rayft.errors import ConfigError, FieldError

NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value.

    Raises:
        ConfigError: if the text has no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([FieldError(text, text, "an override of the form key.path=value")], "overrides")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and NUMBER.match(value.strip()):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    return [p for p in key.strip().split(".")], value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set (creating sections as needed)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = out
        for k in keys[:-1]:
            if isinstance(node, list):  # tasks.1.lr: an entry of a list, by its index
                node = node[_index(node, k, text)]
                continue
            nxt = node.get(k)
            if not isinstance(nxt, (dict, list)):
                nxt = node[k] = {}
            node = nxt
        if isinstance(node, list):
            node[_index(node, keys[-1], text)] = value
        else:
            node[keys[-1]] = value
    return out


def _index(items: list[Any], key: str, text: str) -> int:
    """``key`` as an index of ``items``.

    Raises:
        ConfigError: if it is not one.
    """
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError([FieldError(text.partition("=")[0], key, f"an index of that list: 0-{len(items) - 1}")],
                          "overrides")
    return int(key)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: if the file is missing, unparsable or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError([FieldError("<file>", str(p), "an existing YAML file")])
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([FieldError("<file>", str(p), f"valid YAML{where}: {getattr(exc, 'problem', exc)}")]) from None
    if raw is None:
        raise ConfigError([FieldError("<file>", str(p), "a non-empty YAML mapping")])
    if not isinstance(raw, dict):
        raise ConfigError([FieldError("<root>", type(raw).__name__, "a YAML mapping of sections")], str(p))
    return raw


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        # Drop pydantic's internal tags (e.g. union member names) from the location.
        path = ".".join(x for x in loc if not x.startswith("function-"))
        kind = err["type"]
        if kind == "extra_forbidden":
            expected = "unknown key (not part of this section)"
        elif kind == "missing":
            expected = "required field is missing"
        else:
            expected = err["msg"]
        errors.append(FieldError(path, err.get("input"), expected))
    return errors


def build_config(raw: dict[str, Any], *, source: str | None = None, check: bool = True) -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig`.

    Args:
        raw: the parsed YAML (with overrides applied).
        source: file name used in error messages.
        check: also run the semantic checks (registries, files, columns, sweep space).

    Raises:
        ConfigError: listing every bad field with its path, value and what was expected.
    """
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = _pydantic_errors(exc)
        if check:
            from rayft.config.validate import partial_checks

            errors += partial_checks(raw, {e.path for e in errors})
        raise ConfigError(errors, source) from None
    if check:
        from rayft.config.validate import semantic_checks

        errors = semantic_checks(cfg)
        if errors:
            raise ConfigError(errors, source)
        _settle_task_params(cfg)
    return cfg


def _settle_task_params(cfg: ExperimentConfig) -> None:
    """Write the task's own keys back as its schema settles them (a store folder made absolute here, say), so
    that workers, whose working directory differs, read the values the driver checked."""
    from rayft.tasks import TASKS

    raw = cfg.task.params()
    if not raw or cfg.task.name not in TASKS:
        return
    settled = TASKS.get(cfg.task.name).params.model_validate(raw).model_dump(mode="json")
    for key in raw:
        if key in settled and settled[key] != raw[key]:
            setattr(cfg.task, key, settled[key])


def load_config(path: str | Path, overrides: Iterable[str] = (), *, check: bool = True) -> ExperimentConfig:
    """Read, override and validate an experiment YAML.

    Raises:
        ConfigError: if the file or any field is invalid (all problems are listed together).
    """
    raw = apply_overrides(read_yaml(path), overrides)
    return build_config(raw, source=str(path), check=check)


def dump_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain data (what gets stored in manifests and W&B)."""
    return cfg.model_dump(mode="json")
