"""Registries: a name registers once, and a miss names what is registered."""

from __future__ import annotations

import pytest

from rayft.methods import METHODS
from rayft.registry import Registry, UnknownNameError


def test_registry_refuses_duplicates_and_lists_names():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(UnknownNameError, match="expected one of: a"):
        reg.get("b")
    assert {"full", "lora"} <= set(METHODS.names())
