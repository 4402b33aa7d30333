"""User-facing errors. The CLI turns these into a message and an exit code, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One bad field: where it is in the YAML, what it held, and what was expected."""

    path: str
    value: Any
    expected: str

    def __str__(self) -> str:
        shown = _short(self.value)
        return f"{self.path or '<root>'}: {self.expected} (got {shown})"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RayftError(Exception):
    """Base class of errors caused by user input (exit code 2 in the CLI)."""

    exit_code = 2


class ClusterError(RayftError):
    """The cluster could not do what was asked, through no fault of the input (exit code 1): the message says what
    failed, what it means and what to try."""

    exit_code = 1


class ConfigError(RayftError):
    """An experiment config with one or more bad fields; all of them are listed at once."""

    def __init__(self, errors: list[FieldError], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid config{where}: {len(self.errors)} error(s)"]
        lines += [f"  - {e}" for e in self.errors]
        super().__init__("\n".join(lines))


class DataError(RayftError):
    """A data source that is missing, empty or unreadable.

    ``field`` and ``value`` say which config key and value it is about (``data.source`` unless told), so that
    config validation can report it as a :class:`FieldError`."""

    def __init__(self, message: str, *, field: str = "data.source", value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class StoreError(RayftError):
    """An adapter store entry that is missing or inconsistent."""


class UnknownNameError(RayftError, KeyError):
    """A name no registry holds (method, task, model, dataset); the message lists the valid names.

    It is still a ``KeyError``, the error of a failed lookup, for code that catches that."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class MissingExtraError(RayftError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed; install it with: pip install \"rayft[{extra}]\"")
