"""Checks that later stages add to config validation, without the config package importing those stages.

A stage registers a function ``check(raw) -> list[FieldError]`` when its checks module is imported
(``register_check(check)``); the validator runs every registered check on the raw YAML mapping, in
registration order, together with its own checks, so ``rayft validate`` still reports every problem at once.
The modules that register checks are named in :data:`CHECK_MODULES` and imported on first use only.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from rayft.errors import FieldError

Check = Callable[[dict[str, Any]], list[FieldError]]

# Modules whose import registers their checks (imported lazily, the first time checks run).
CHECK_MODULES: tuple[str, ...] = ("rayft.sweep.checks", "rayft.train.checks", "rayft.train.continual_checks")

_CHECKS: list[Check] = []


def register_check(check: Check) -> Check:
    """Add ``check`` to the validation of every config; registering a function of the same name again (a
    reloaded module) replaces it in place."""
    key = (check.__module__, check.__qualname__)
    same = [i for i, c in enumerate(_CHECKS) if (c.__module__, c.__qualname__) == key]
    if same:
        _CHECKS[same[0]] = check
    else:
        _CHECKS.append(check)
    return check


def registered_checks() -> tuple[Check, ...]:
    """Every registered check, in registration order, after importing the modules that register them."""
    for module in CHECK_MODULES:
        import_module(module)
    return tuple(_CHECKS)


def run_registered(raw: dict[str, Any]) -> list[FieldError]:
    """The errors of every registered check on the raw config mapping."""
    return [error for check in registered_checks() for error in check(raw)]
