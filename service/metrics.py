"""Prometheus metrics on a registry each app owns, so two apps in one process never share counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .registry import STATES

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SCAN_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
# llr minus threshold: symmetric around 0 so both sides of the decision keep their resolution.
_LLR_STEPS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
LLR_MARGIN_BUCKETS = tuple(-step for step in reversed(_LLR_STEPS)) + (0.0,) + _LLR_STEPS
QUEUES = ("scan", "generate")


class _ModelStateCollector(Collector):
    """Reports `terdguard_models{state}` from the registry at scrape time, so it never drifts."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self._count_by_state = count_by_state

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("terdguard_models", "Registered models by state", labels=["state"])]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("terdguard_models", "Registered models by state", labels=["state"])
        counts = self._count_by_state()
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        return [family]


class Metrics:
    """Every metric the service exports, registered on one `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "terdguard_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.http_duration = Histogram(
            "terdguard_http_request_duration_seconds", "HTTP request duration by route template",
            ["route"], buckets=HTTP_BUCKETS, registry=self.registry,
        )
        self.guard_decisions = Counter(
            "terdguard_guard_decisions", "Guard decisions per sample", ["model", "verdict", "action"],
            registry=self.registry,
        )
        self.guard_llr = Histogram(
            "terdguard_guard_llr", "Sample llr minus the model's input threshold", ["model"],
            buckets=LLR_MARGIN_BUCKETS, registry=self.registry,
        )
        self.guard_threshold = Gauge(
            "terdguard_guard_threshold", "Input llr threshold in use per model", ["model"], registry=self.registry,
        )
        self.generation_duration = Histogram(
            "terdguard_generation_duration_seconds", "Sampler time per generation request", ["model", "sampler"],
            buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.scan_duration = Histogram(
            "terdguard_scan_duration_seconds", "Trigger reversion time per scan", ["profile", "outcome"],
            buckets=SCAN_BUCKETS, registry=self.registry,
        )
        self.scans = Counter(
            "terdguard_scans", "Finished scans by profile and outcome", ["profile", "outcome"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "terdguard_queue_depth", "Jobs waiting per queue", ["queue"], registry=self.registry,
        )
        for queue in QUEUES:
            self.queue_depth.labels(queue=queue).set(0)

    def watch_models(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        """Export `terdguard_models{state}` by calling `count_by_state` on each scrape."""
        self.registry.register(_ModelStateCollector(count_by_state))

    def forget_model(self, model: str) -> None:
        """Drop the per-model threshold gauge of a deleted model."""
        try:
            self.guard_threshold.remove(model)
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
