"""The engine-overhead benchmark's bookkeeping: phase timing and the per-pass ratio of plain over engine seconds."""

import collections
from types import SimpleNamespace

import pytest

from tests.support.benchmark_module import load


@pytest.fixture(scope="module")
def bench():
    return load("engine_overhead")


def test_a_pass_compares_the_plain_copies_seconds_with_the_engines(bench):
    assert bench.ORDER == ("plain", "engine", "engine", "plain")
    plain, engine = {"forward": 1.0, "backward": 0.5, "step": 0.5}, {"forward": 1.1, "backward": 0.6, "step": 0.3}
    slow_engine = {"forward": 2.0, "backward": 1.5, "step": 0.5}
    blocks = [plain, engine, engine, plain, plain, slow_engine, engine, plain]
    assert bench.pair_ratios(blocks) == pytest.approx([1.0, 4.0 / 6.0])
    assert bench.pair_ratios(blocks + [plain, engine]) == pytest.approx([1.0, 4.0 / 6.0])  # an unfinished pass


def test_a_timed_step_runs_forward_backward_step_and_adds_each_phase(bench):
    calls = []

    class Trainer:
        def __call__(self, **inputs):
            calls.append(("forward", inputs))
            return SimpleNamespace(loss="loss")

        def backward(self, loss):
            calls.append(("backward", loss))

        def step(self):
            calls.append(("step", None))

    times = collections.Counter()
    bench.timed_step(Trainer(), {"input_ids": 1}, times)
    bench.timed_step(Trainer(), {"input_ids": 2}, times)
    assert [c[0] for c in calls] == ["forward", "backward", "step"] * 2
    assert calls[1] == ("backward", "loss") and calls[3] == ("forward", {"input_ids": 2})
    assert set(times) == set(bench.PHASES) and all(v >= 0 for v in times.values())
