"""Prometheus metrics of a state source, made with prometheus_client.

A custom collector reads the state on every scrape, into a registry of its
own: nothing global, so two servers in one process never share metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .sources import Source

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class KfenceCollector(Collector):
    """KFENCE's counters and sampling settings, one series per process (label pid)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        processes, unreadable = self.source.processes()
        labels = ["pid"]
        gauges = {
            "running": GaugeMetricFamily(
                "kfence_process_running", "1 while the process runs, 0 after it exited",
                labels=labels),
            "enabled": GaugeMetricFamily(
                "kfence_enabled", "1 while sampling is switched on", labels=labels),
            "interval": GaugeMetricFamily(
                "kfence_sample_interval_seconds", "Time gate: one sampled allocation per "
                "interval", labels=labels),
            "rate": GaugeMetricFamily(
                "kfence_sample_rate", "One in N allocations sampled (0: the time gate)",
                labels=labels),
            "burst": GaugeMetricFamily(
                "kfence_burst", "Extra sampled allocations per interval", labels=labels),
            "pool": GaugeMetricFamily(
                "kfence_pool_objects", "Pool slots", labels=labels),
            "allocated": GaugeMetricFamily(
                "kfence_allocated_objects", "Guarded objects currently allocated",
                labels=labels),
            "zombie": GaugeMetricFamily(
                "kfence_zombie_objects", "Objects caught between allocation and free",
                labels=labels),
        }
        counters = {
            "allocations": CounterMetricFamily(
                "kfence_allocations", "Guarded allocations", labels=labels),
            "frees": CounterMetricFamily("kfence_frees", "Guarded frees", labels=labels),
            "bugs": CounterMetricFamily("kfence_bugs", "Bugs reported", labels=labels),
            "skipped": CounterMetricFamily(
                "kfence_skipped_allocations", "Sampled allocations that fell through to "
                "glibc, by reason", labels=[*labels, "reason"]),
        }
        for p in processes:
            s = p.view.stats()
            pid = [str(p.pid)]
            values: dict[str, Any] = {
                "running": int(p.running), "enabled": int(s.enabled),
                "interval": s.sample_interval_ms / 1000, "rate": s.sample_rate,
                "burst": s.burst, "pool": s.pool_size, "allocated": s.currently_allocated,
                "zombie": s.zombie_allocations}
            for key, family in gauges.items():
                family.add_metric(pid, values[key])
            counters["allocations"].add_metric(pid, s.total_allocations)
            counters["frees"].add_metric(pid, s.total_frees)
            counters["bugs"].add_metric(pid, s.total_bugs)
            for reason, count in s.skipped.items():
                counters["skipped"].add_metric([*pid, reason], count)
        unreadable_gauge = GaugeMetricFamily(
            "kfence_unreadable_state_files", "State files that could not be read")
        unreadable_gauge.add_metric([], len(unreadable))
        yield from gauges.values()
        yield from counters.values()
        yield unreadable_gauge


def registry_for(source: Source) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KfenceCollector(source))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition format."""
    return generate_latest(registry)


def metrics_doc(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The same metrics as JSON: families with their samples."""
    return [{"name": m.name, "type": m.type, "help": m.documentation,
             "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                         for s in m.samples]}
            for m in registry.collect()]
