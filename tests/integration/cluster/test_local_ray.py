"""The tests' local Ray (the ``ray_local`` fixture): its workers import the shared test helpers by name."""

from __future__ import annotations

import pytest

from tests import support
from tests.support import tiny_tasks

pytestmark = pytest.mark.integration


def test_a_worker_imports_the_test_helpers_by_name(ray_local):
    # A module-level function travels by reference (its module and name): the worker imports tests.support itself.
    rows = ray_local.get(ray_local.remote(tiny_tasks.alpaca_rows).options(num_cpus=0).remote(3))
    assert rows == tiny_tasks.alpaca_rows(3)

    @ray_local.remote(num_cpus=0)
    def support_file() -> str:
        from tests import support as imported

        return imported.__file__

    assert ray_local.get(support_file.remote()) == support.__file__  # this checkout's helpers
