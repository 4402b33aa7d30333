"""What a generation server counts, and its Prometheus text form.

:class:`GenerationMetrics` is written by decode engines (tokens, finished requests, time to first token and
inter-token latency) and by the model pool (adapter loads and evictions); one instance serves every engine of a
replica, so its counters only grow even when a model and its engine go away. :meth:`GenerationMetrics.snapshot`
is a frozen record that crosses process boundaries; :func:`render_prometheus` turns the snapshots of several
replicas into the exposition format with ``prometheus_client``'s metric families (one ``replica`` label each).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Mapping

# Seconds. Time to first token spans a queued request's wait; inter-token latency is one decode step.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Counts per bucket (``counts[i]``: observations <= ``bounds[i]``, not cumulative; the last is +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)`` pairs, ending with ``+Inf``, as Prometheus wants."""
        out, seen = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            seen += n
            out.append((bound, seen))
        return out


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.total = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


@dataclass(frozen=True)
class MetricsSnapshot:
    """One replica's generation figures at one moment."""

    tokens_generated: int = 0
    prompt_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # requests by finish reason
    rejected: int = 0  # requests refused because the queue was full
    running: int = 0
    queued: int = 0
    adapter_loads: int = 0
    adapter_evictions: int = 0
    ttft: HistogramSnapshot = field(default_factory=lambda: _Histogram(TTFT_BUCKETS).snapshot())
    itl: HistogramSnapshot = field(default_factory=lambda: _Histogram(ITL_BUCKETS).snapshot())


class GenerationMetrics:
    """Thread-safe counters and histograms of one replica (engine threads write, any thread reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"tokens_generated": 0, "prompt_tokens": 0, "rejected": 0, "adapter_loads": 0,
                        "adapter_evictions": 0}
        self._finished: dict[str, int] = {}
        self._ttft, self._itl = _Histogram(TTFT_BUCKETS), _Histogram(ITL_BUCKETS)

    def count(self, name: str, n: int = 1) -> None:
        """Adds ``n`` to a counter (``tokens_generated``, ``prompt_tokens``, ``rejected``, ``adapter_loads``,
        ``adapter_evictions``)."""
        with self._lock:
            self._counts[name] += n

    def finished(self, reason: str) -> None:
        with self._lock:
            self._finished[reason] = self._finished.get(reason, 0) + 1

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        with self._lock:
            self._itl.observe(seconds)

    def snapshot(self, running: int = 0, queued: int = 0) -> MetricsSnapshot:
        """The figures now; ``running`` and ``queued`` are gauges the caller sums over its engines."""
        with self._lock:
            return MetricsSnapshot(finished=dict(self._finished), running=running, queued=queued,
                                   ttft=self._ttft.snapshot(), itl=self._itl.snapshot(), **self._counts)


def render_prometheus(snapshots: Mapping[str, MetricsSnapshot]) -> bytes:
    """The Prometheus text exposition of several replicas' snapshots (``replica`` label = the mapping's key)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class Collector:
        def collect(self):
            counters = {
                "tokens_generated": ("rayft_generation_tokens", "Completion tokens generated"),
                "prompt_tokens": ("rayft_prompt_tokens", "Prompt tokens prefilled"),
                "rejected": ("rayft_requests_rejected", "Requests refused with 429 (queue full)"),
                "adapter_loads": ("rayft_adapter_loads", "Models and adapters loaded"),
                "adapter_evictions": ("rayft_adapter_evictions", "Models and adapters evicted"),
            }
            for attr, (name, doc) in counters.items():
                family = CounterMetricFamily(name, doc, labels=["replica"])
                for replica, snap in snapshots.items():
                    family.add_metric([replica], getattr(snap, attr))
                yield family
            finished = CounterMetricFamily("rayft_requests_finished", "Generation requests by finish reason",
                                           labels=["replica", "finish_reason"])
            for replica, snap in snapshots.items():
                for reason, n in sorted(snap.finished.items()):
                    finished.add_metric([replica, reason], n)
            yield finished
            for attr, doc in (("running", "Sequences being decoded"), ("queued", "Requests waiting for a slot")):
                gauge = GaugeMetricFamily(f"rayft_sequences_{attr}", doc, labels=["replica"])
                for replica, snap in snapshots.items():
                    gauge.add_metric([replica], getattr(snap, attr))
                yield gauge
            for attr, name, doc in (("ttft", "rayft_time_to_first_token_seconds", "Time to first token"),
                                    ("itl", "rayft_inter_token_latency_seconds", "Time between tokens")):
                hist = HistogramMetricFamily(name, doc, labels=["replica"])
                for replica, snap in snapshots.items():
                    h = getattr(snap, attr)
                    hist.add_metric([replica], h.cumulative(), h.total)
                yield hist

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)
