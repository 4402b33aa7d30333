"""Config checks of ``train.continual_from`` / ``ewc`` / ``replay`` and ``train.curriculum``, run by ``rayft
validate`` (and before every train or sweep) with every other check, so bad input stops before any training.

Light: the store's manifest and the base model's fingerprint are read; no torch.
"""

from __future__ import annotations

from typing import Any

from rayft.config import schema
from rayft.config.checks import register_check
from rayft.errors import FieldError, RayftError

CONTINUAL_TASKS = ("sequence_classification", "token_classification")  # rayft.train.continual.SUPPORTED_TASKS


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def _name(raw: dict[str, Any], section: str) -> Any:
    return _section(raw, section).get("name", schema.default(f"{section}.name"))


def check_continual(raw: dict[str, Any], *, require: bool = False) -> list[FieldError]:
    """EWC and replay need a previous task; the entry is an adapter of this method, of a supported task, trained on
    these very base weights; ZeRO 0–2. A missing entry is an error only with ``require`` (when the data is
    prepared, the first step of ``rayft train`` and ``rayft sweep``): an experiment validates before the result it
    continues from has been trained."""
    train = _section(raw, "train")
    entry = train.get("continual_from")
    errors = [FieldError(f"train.{key}", train[key], "a previous task to keep: set train.continual_from to a store "
                         "id of the same base") for key in ("ewc", "replay") if train.get(key) is not None and not entry]
    if not isinstance(entry, str) or not entry:
        return errors
    where = "train.continual_from"
    task = _name(raw, "task")
    if task not in CONTINUAL_TASKS:
        errors.append(FieldError("task.name", task, f"a task continual learning supports: {', '.join(CONTINUAL_TASKS)}"))
    from rayft.store.store import AdapterStore

    store_path = _section(raw, "store").get("path", schema.default("store.path"))
    try:
        store = AdapterStore(store_path)
        if not store.exists(entry):
            if not require:
                return errors
            have = ", ".join(m.adapter_id for m in store.list()) or "nothing"
            return errors + [FieldError(where, entry, f"an id in store {store_path!r} (it has: {have})")]
        manifest = store.manifest(entry)
    except RayftError as exc:
        return errors + [FieldError(where, entry, f"a readable store entry: {exc}")]
    if manifest.task not in CONTINUAL_TASKS:
        errors.append(FieldError(where, entry, f"an entry of a task continual learning supports "
                                 f"({', '.join(CONTINUAL_TASKS)}); it was trained for {manifest.task!r}"))
    method = _name(raw, "method")
    if manifest.kind != "adapter" or manifest.method != method:
        errors.append(FieldError(where, entry, f"a {method!r} adapter, as method.name says; it is a {manifest.kind!r} "
                                 f"entry made by {manifest.method!r}"))
    errors += _base_problems(raw, entry, manifest)
    return errors


def require_entry(cfg: Any) -> None:
    """Check ``train.continual_from`` of a validated config, its store entry included.

    Raises:
        ConfigError: naming each problem (unknown entry, another base, another task or method).
    """
    from rayft.errors import ConfigError

    if cfg.train.continual_from:
        errors = check_continual(cfg.model_dump(mode="json"), require=True)
        if errors:
            raise ConfigError(errors)


def _base_problems(raw: dict[str, Any], entry: str, manifest: Any) -> list[FieldError]:
    """The entry was trained on the configured base model's very weights (fingerprint)."""
    from rayft.models import fingerprint, resolve_model

    name = _section(raw, "model").get("name")
    if not isinstance(name, str):
        return []
    try:
        found = fingerprint(resolve_model(name))
    except RayftError:
        return []  # an unknown model is reported by the model check
    if manifest.base_fingerprint and found != manifest.base_fingerprint:
        return [FieldError("train.continual_from", entry,
                           f"an entry trained on this base: it was trained on {manifest.base_model!r} (fingerprint "
                           f"{manifest.base_fingerprint}), model.name {name!r} has fingerprint {found}")]
    return []


def check_curriculum(raw: dict[str, Any]) -> list[FieldError]:
    """A curriculum column exists in the data; curricula need the in-memory engine and no packing."""
    train, data = _section(raw, "train"), _section(raw, "data")
    spec = train.get("curriculum")
    if not isinstance(spec, dict):
        return []
    errors = []
    if data.get("engine") == "ray":
        errors.append(FieldError("train.curriculum", spec, "data.engine: memory (a streamed split cannot be ordered "
                                 "by difficulty)"))
    if train.get("packing"):
        errors.append(FieldError("train.curriculum", spec, "train.packing off (packed rows mix difficulties)"))
    column = spec.get("column")
    if spec.get("by") == "column" and isinstance(column, str) and not errors:
        present = _data_columns(data)
        if present is not None and column not in present:
            errors.append(FieldError("train.curriculum.column", column,
                                     f"a column of the data; it has: {', '.join(map(str, present))}"))
    return errors


def _data_columns(data: dict[str, Any]) -> list[str] | None:
    """The data's columns (the first rows read), or None when it cannot be read (the data check says why)."""
    from rayft.data.sources import open_source

    splits = data.get("splits") if isinstance(data.get("splits"), dict) else {}
    source = data.get("source")
    try:
        loaded = open_source(source, data.get("format", schema.default("data.format")), splits,
                             data.get("hub_config"), nrows=5)
    except (RayftError, OSError, ValueError, TypeError):
        return None
    return [str(c) for c in loaded.columns]


register_check(check_continual)
register_check(check_curriculum)
