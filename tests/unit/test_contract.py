"""Python restates nothing of the C contract: every counter, bug kind and runtime option
that the library declares reaches the stats, the metrics, the report grammar and the
control block without a Python edit."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from kfence_py import render
from kfence_py._native import ffi
from kfence_py.contract import ACCESSES, BUG_KINDS, COUNTERS
from kfence_py.metrics import metrics_doc, registry_for
from kfence_py.options import runtime_options
from kfence_py.reports import RULE, parse_reports, title_line
from kfence_py.sources import Process
from kfence_py.state import STATS_COUNTERS, Stats


def _stats() -> Stats:
    control = {name: 1000 + i for i, name in enumerate(runtime_options())}
    return Stats(pid=7, pool_size=8, zombie_allocations=99, control=control,
                 counters=tuple(100 + c.index for c in COUNTERS))


class _View:
    header = SimpleNamespace(start_realtime_ns=1, start_ns=1)  # who the process is

    def stats(self) -> Stats:
        return _stats()


class _Source:
    def processes(self, pid=None):
        return [Process(7, _View(), True)], []


def test_every_counter_is_in_the_stats_text_json_and_metrics():
    stats = _stats()
    lines = render.stats_lines(stats)
    doc = stats.as_dict()
    flat = {**doc, **{k: v for d in doc.values() if isinstance(d, dict) for k, v in d.items()}}
    families = {m["name"]: m for m in metrics_doc(registry_for(_Source()))}
    for counter in COUNTERS:
        value = 100 + counter.index
        assert f"{counter.name}: {value}" in lines
        assert flat[counter.key] == value
        samples = families[f"kfence_{counter.metric}"]["samples"]
        assert any(s["value"] == value and s["labels"].get("reason", counter.key) == counter.key
                   for s in samples), counter
    assert [c.key for c in STATS_COUNTERS if c not in COUNTERS] == ["zombie_allocations"]


def test_every_runtime_option_is_in_the_control_block_stats_and_metrics():
    fields = [name for name, _ in ffi.typeof("struct kfence_control").fields]
    assert fields == list(runtime_options())
    stats = _stats()
    lines = "\n".join(render.stats_lines(stats))
    families = {m["name"] for m in metrics_doc(registry_for(_Source()))}
    for name, spec in runtime_options().items():
        assert stats.control[name] == 1000 + fields.index(name)
        assert name.replace("_", " ") in lines
        assert f"kfence_{name}{'_seconds' if spec.type == 'MS' else ''}" in families


def test_every_bug_kind_parses_from_its_title_and_headline():
    for kind in BUG_KINDS:
        access = next(a for a in ACCESSES if a) if kind.with_access else None
        what = f"{kind.headline}{access} at " if access else kind.headline
        text = "\n".join([RULE, title_line(kind.name, access, "f+0x1"), "",
                          f"{what}0x1000 (in kfence-#2):", RULE, ""])
        (report,) = parse_reports(text)
        assert (report.kind, report.access, report.address, report.object_index) == (
            kind.name, access, 0x1000, 2)


def test_the_client_loads_no_server(tmp_path):
    code = ("import sys, kfence_py.cli, kfence_py.client; "
            "print(sorted(m for m in ('kfence_py.server', 'prometheus_client', 'http.server') "
            "if m in sys.modules))")
    # Outside the source tree: there its unbuilt package would shadow the installed one.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


# The control block's words as state version 3 has them.  A controller of version 3
# writes these offsets: a RUNTIME option goes after them (options.inc's order makes the
# fields), or KFENCE_STATE_VERSION is bumped and this table with it.
CONTROL_V3 = {"enabled": 0, "sample_interval": 4, "sample_rate": 8, "burst": 12,
              "skip_covered_thresh": 16, "canary_sweep": 20}


def test_the_control_block_keeps_its_words_within_a_version():
    from kfence_py._native import lib
    if lib.KFENCE_STATE_VERSION != 3:
        pytest.skip("pinned for state version 3")
    found = {name: ffi.offsetof("struct kfence_control", name) for name in CONTROL_V3}
    assert found == CONTROL_V3, "a RUNTIME option was inserted before others: append it, " \
        "or bump KFENCE_STATE_VERSION"
