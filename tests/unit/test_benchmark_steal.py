"""The overhead benchmark's reading of hypervisor steal (/proc/stat), which sets noisy rounds apart."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_overhead_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # by path, not registered in sys.modules
    return module


def test_steal_is_the_stolen_share_of_the_cpu_time_between_two_readings(bench):
    assert bench.steal_pct((1000, 10), (3000, 110)) == 5.0
    assert bench.steal_pct((1000, 10), (3000, 10)) == 0.0
    assert bench.steal_pct(None, (3000, 10)) is None  # no /proc/stat: unknown, not zero
    assert bench.steal_pct((3000, 10), (3000, 10)) is None  # no time passed


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux only")
def test_cpu_ticks_reads_this_machine(bench):
    total, stolen = bench.cpu_ticks()
    assert 0 <= stolen <= total
    later = bench.cpu_ticks()
    assert later[0] >= total and later[1] >= stolen
