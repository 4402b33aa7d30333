"""The overhead benchmark's readings of /proc: hypervisor steal (sets noisy rounds apart), training threads' CPU share."""

from pathlib import Path

import pytest

from tests.support.benchmark_module import load


@pytest.fixture(scope="module")
def bench():
    return load("train_overhead")


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


def test_the_training_share_counts_the_busiest_threads_against_the_machine_less_steal(bench):
    before = ({1: 100, 2: 50, 3: 7}, (10_000, 100))
    after = ({1: 1_050, 2: 990, 3: 17, 4: 5}, (12_100, 200))  # 2,000 ticks not stolen; thread 4 started meanwhile
    assert bench.training_cpu_share(2, before, after) == 94.5  # (950 + 940) / 2,000
    assert bench.training_cpu_share(3, before, after) == 95.0
    assert bench.training_cpu_share(2, before, ({}, (12_100, 200))) is None  # the process was gone
    assert bench.training_cpu_share(2, (before[0], None), after) is None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux only")
def test_thread_ticks_reads_every_thread_of_a_process(bench):
    import os
    import threading

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        ticks = bench.thread_ticks(os.getpid())
        assert {threading.get_native_id(), helper.native_id} <= set(ticks)
        assert all(t >= 0 for t in ticks.values())
    finally:
        stop.set()
        helper.join()
    assert bench.thread_ticks(2**22 + 1) == {}  # no such process
