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

from .contract import Counter
from .options import OptionSpec, runtime_options
from .sources import Source
from .state import STATS_COUNTERS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _setting(spec: OptionSpec) -> GaugeMetricFamily:
    """The gauge of a runtime option: kfence_<name>, or kfence_<name>_seconds for an MS one."""
    if spec.type == "MS":
        return GaugeMetricFamily(f"kfence_{spec.name}_seconds",
                                 f"{spec.description} Exported in seconds.", labels=["pid"])
    return GaugeMetricFamily(f"kfence_{spec.name}", spec.description, labels=["pid"])


def _counter(counter: Counter) -> GaugeMetricFamily | CounterMetricFamily:
    """The family of a counter: kfence_<metric>, with a reason label if it has one."""
    cls = GaugeMetricFamily if counter.type == "GAUGE" else CounterMetricFamily
    return cls(f"kfence_{counter.metric}", counter.help,
               labels=["pid", "reason"] if counter.label else ["pid"])


class KfenceCollector(Collector):
    """KFENCE's counters and sampling settings, one series per process (label pid).

    The families come from the library's tables: a gauge per runtime option
    (option table) and a family per counter metric (counter table, with the
    zombie objects the reader counts), with a reason label where its counters
    have one; and whether the process runs and its pool slots.
    """

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        processes, unreadable = self.source.processes()
        pid_label = ["pid"]
        running = GaugeMetricFamily(
            "kfence_process_running", "1 while the process runs, 0 after it exited",
            labels=pid_label)
        specs = runtime_options()
        settings = {name: _setting(spec) for name, spec in specs.items()}
        pool = GaugeMetricFamily("kfence_pool_objects", "Pool slots", labels=pid_label)
        counters: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for c in STATS_COUNTERS:
            if c.metric not in counters:
                counters[c.metric] = _counter(c)
        for p in processes:
            s = p.view.stats()
            pid = [str(p.pid)]
            running.add_metric(pid, int(p.running))
            for name, family in settings.items():
                value = s.control[name]
                family.add_metric(pid, value / 1000 if specs[name].type == "MS" else value)
            pool.add_metric(pid, s.pool_size)
            for c in STATS_COUNTERS:
                counters[c.metric].add_metric([*pid, c.key] if c.label else pid, s.value(c))
        unreadable_gauge = GaugeMetricFamily(
            "kfence_unreadable_state_files", "State files that could not be read")
        unreadable_gauge.add_metric([], len(unreadable))
        yield running
        yield from settings.values()
        yield pool
        yield from (f for f in counters.values() if f.type == "gauge")
        yield from (f for f in counters.values() if f.type != "gauge")
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
