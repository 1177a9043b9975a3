"""Prometheus metrics of a state source, made with prometheus_client.

A custom collector reads the state on every scrape, into a registry of its
own: nothing global, so two servers in one process never share metrics.

Following Prometheus' naming guide: ``kfence_info`` says which kfence_py
(version, state version); the families come from the library's tables; and
no label grows without bound.  A running process has its series (label
pid); an exited one has none of its own, since every process of a busy host
would leave a series behind: its counters are added into one series without
the pid label, so ``sum()`` of a family is the host's total, and it never
goes back when retention deletes state files (the collector remembers what
it has counted).  ``serve --textfile-dir`` writes the same metrics for
node_exporter's textfile collector (write_textfile).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .contract import STATE_VERSION, Counter
from .options import OptionSpec, runtime_options
from .sources import Process, Source
from .state import STATS_COUNTERS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXTFILE_NAME = "kfence.prom"  # node_exporter's textfile collector reads *.prom
# The counters an exited process adds into the host's series: the COUNTER ones.
TOTALS = tuple(c for c in STATS_COUNTERS if c.type == "COUNTER")

Identity = tuple[int, int, int]  # pid, start times (a pid used again is another process)


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


def _identity(p: Process) -> Identity:
    h = p.view.header
    return p.pid, int(h.start_realtime_ns), int(h.start_ns)


def _version() -> str:
    from . import __version__  # the package's, set once it is imported

    return __version__


class KfenceCollector(Collector):
    """KFENCE's counters and sampling settings, one series per running process (label
    pid), the counters of exited processes added up in one series without it.

    The families come from the library's tables: a gauge per runtime option
    (option table) and a family per counter metric (counter table, with the
    zombie objects the reader counts), with a reason label where its counters
    have one; and how many processes run or have exited, and their pool slots.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._lock = threading.Lock()
        # The last counters read of every process whose state file is there...
        self._seen: dict[Identity, tuple[tuple[int, ...], Path | None]] = {}
        # ... and the sum of those of processes whose file is gone (retention).
        self._gone = [0] * len(TOTALS)

    def _exited_totals(self, processes: list[Process], unreadable: set[Path]) -> list[int]:
        """TOTALS summed over exited processes, those whose files are gone included."""
        now = {_identity(p): p for p in processes}
        for identity, (values, path) in list(self._seen.items()):
            # A file that could not be read this time is still there: not gone.
            if identity not in now and path not in unreadable:
                del self._seen[identity]
                self._gone = [a + b for a, b in zip(self._gone, values)]
        totals = list(self._gone)
        for identity, p in now.items():
            stats = p.view.stats()
            values = tuple(stats.value(c) for c in TOTALS)
            self._seen[identity] = (values, p.state_file)
            if not p.running:
                totals = [a + b for a, b in zip(totals, values)]
        return totals

    def collect(self) -> Iterator[Metric]:
        processes, unreadable = self.source.processes()
        with self._lock:
            exited = self._exited_totals(processes, {u.path for u in unreadable})
        running = [p for p in processes if p.running]
        info = InfoMetricFamily("kfence", "The kfence_py that reads the state files",
                                value={"version": _version(),
                                       "state_version": str(STATE_VERSION)})
        counts = GaugeMetricFamily("kfence_processes",
                                   "Processes with a state file, running or exited",
                                   labels=["state"])
        counts.add_metric(["running"], len(running))
        counts.add_metric(["exited"], len(processes) - len(running))
        specs = runtime_options()
        settings = {name: _setting(spec) for name, spec in specs.items()}
        pool = GaugeMetricFamily("kfence_pool_objects", "Pool slots", labels=["pid"])
        counters: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for c in STATS_COUNTERS:
            if c.metric not in counters:
                counters[c.metric] = _counter(c)
        for p in running:
            s = p.view.stats()
            pid = [str(p.pid)]
            for name, family in settings.items():
                value = s.control[name]
                family.add_metric(pid, value / 1000 if specs[name].type == "MS" else value)
            pool.add_metric(pid, s.pool_size)
            for c in STATS_COUNTERS:
                counters[c.metric].add_metric([*pid, c.key] if c.label else pid, s.value(c))
        for c, value in zip(TOTALS, exited):
            total = counters[c.metric]
            total.add_sample(f"{total.name}_total", {"reason": c.key} if c.label else {},
                             value)
        unreadable_gauge = GaugeMetricFamily(
            "kfence_unreadable_state_files", "State files that could not be read")
        unreadable_gauge.add_metric([], len(unreadable))
        yield info
        yield counts
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


def write_textfile(directory: str | os.PathLike[str], registry: CollectorRegistry) -> Path:
    """The metrics in <directory>/kfence.prom for node_exporter's textfile collector,
    written whole: under another name first (not *.prom), then renamed over it."""
    path = Path(directory) / TEXTFILE_NAME
    write_to_textfile(str(path), registry)
    return path
