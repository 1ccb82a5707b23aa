"""The event-loop counters and histograms (``bus.metrics``), read back the way Prometheus
reads them: the text exposition, parsed by prometheus-client's own parser."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from busgate.bus.metrics import Counter, Histogram, exposition


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_counter_counts_each_label_set_apart():
    registry = CollectorRegistry()
    calls = Counter("t_calls", "Calls", ["channel", "status"], registry=registry)
    for status in ["200", "200", "502"]:
        calls.labels("demo", status).inc()
    calls.labels("other", "200").inc(2.5)
    found = samples(registry)
    assert found[("t_calls_total", (("channel", "demo"), ("status", "200")))] == 2.0
    assert found[("t_calls_total", (("channel", "demo"), ("status", "502")))] == 1.0
    assert found[("t_calls_total", (("channel", "other"), ("status", "200")))] == 2.5
    assert calls.labels("demo", "200") is calls.labels("demo", "200")


def test_histogram_buckets_are_cumulative_and_an_observation_on_a_bound_is_in_it():
    """Prometheus counts an observation in every bucket whose bound is >= it (``le``)."""
    registry = CollectorRegistry()
    seconds = Histogram("t_seconds", "Latency", ["system"], registry=registry, buckets=(0.1, 1))
    series = seconds.labels("demo")
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        series.observe(value)
    found = samples(registry)

    def bucket(le: str) -> float:
        return found[("t_seconds_bucket", (("le", le), ("system", "demo")))]

    assert (bucket("0.1"), bucket("1.0"), bucket("+Inf")) == (2.0, 4.0, 5.0)
    assert found[("t_seconds_count", (("system", "demo"),))] == 5.0
    assert math.isclose(found[("t_seconds_sum", (("system", "demo"),))], 8.65)


def test_a_histogram_without_observations_shows_no_series():
    registry = CollectorRegistry()
    Histogram("t_idle_seconds", "Idle", ["system"], registry=registry)
    assert samples(registry) == {}
