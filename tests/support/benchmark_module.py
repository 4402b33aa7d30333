"""A benchmark script from ``benchmarks/``, loaded by path for the tests of its helpers."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.support import REPO

BENCHMARKS = REPO / "benchmarks"


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, not registered in ``sys.modules`` (its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
