"""Metrics for hosts that run many preloaded processes.

Prometheus' naming guide: a ``kfence_info`` metric; a series per running
process only, the counters of exited processes added up in one series without a
pid label (a busy host's exited pids would grow the label set without end) and
never going back when retention deletes their files.  ``serve --textfile-dir``
writes them whole for node_exporter's textfile collector, and a real
node_exporter (Debian's prometheus-node-exporter, on 127.0.0.1) serves them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from ctl import CAP, start_serve, stop_serve
from debian_packages import needs_debian
from prometheus_client.parser import text_string_to_metric_families
from statefile import write_state

import kfence_py
from kfence_py.contract import STATE_VERSION
from kfence_py.metrics import metrics_text, registry_for
from kfence_py.sources import DirectorySource

GONE = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid or more
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample by name and labels; a label with an empty value is no label, as
    Prometheus has it (node_exporter writes pid="" where a series of the family has none)."""
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pids(found: Samples) -> set[str]:
    return {dict(labels)["pid"] for _, labels in found if "pid" in dict(labels)}


@pytest.fixture
def host(start_target) -> tuple[int, Path, bytes]:
    """A running process holding 3 objects, and 3 exited ones (copies) with 2 bugs each."""
    driven, pid, state_dir = start_target({"sample_rate": 1})
    assert driven.ask("hold 3") == "ok"
    data = (state_dir / f"{pid}.state").read_bytes()
    for i in range(3):
        write_state(state_dir, data, GONE + i, bugs=2, start_realtime_ns=i + 1)
    return pid, state_dir, data


def test_exited_processes_add_up_without_a_pid_label_and_never_go_back(host):
    pid, state_dir, data = host
    registry = registry_for(DirectorySource(state_dir))
    first = samples(metrics_text(registry).decode())
    assert pids(first) == {str(pid)}
    info = ("kfence_info", (("state_version", str(STATE_VERSION)),
                            ("version", kfence_py.__version__)))
    assert first[info] == 1
    assert first[("kfence_processes", (("state", "running"),))] == 1
    assert first[("kfence_processes", (("state", "exited"),))] == 3
    assert first[("kfence_bugs_total", ())] == 6
    assert first[("kfence_bugs_total", (("pid", str(pid)),))] == 0
    running_allocs = first[("kfence_allocations_total", (("pid", str(pid)),))]
    assert first[("kfence_allocations_total", ())] >= 3 * 3 and running_allocs >= 3
    assert ("kfence_skipped_allocations_total", (("reason", "capacity"),)) in first
    assert ("kfence_allocated_objects", ()) not in first  # a gauge of the dead means nothing

    (state_dir / f"{GONE}.state").unlink()  # retention deletes one
    second = samples(metrics_text(registry).decode())
    assert second[("kfence_processes", (("state", "exited"),))] == 2
    assert second[("kfence_bugs_total", ())] == 6
    assert second[("kfence_allocations_total", ())] == first[("kfence_allocations_total", ())]

    write_state(state_dir, data, GONE + 10, bugs=1)
    # A pid used again is another process: the first one's bugs stay counted.
    write_state(state_dir, data, GONE + 1, bugs=5, start_realtime_ns=99)
    third = samples(metrics_text(registry).decode())
    assert third[("kfence_bugs_total", ())] == 2 + 2 + 5 + 2 + 1


def test_serve_writes_the_textfile_whole_and_removes_it_when_stopped(host, short_dir):
    pid, state_dir, data = host
    textfiles = short_dir / "textfiles"
    textfiles.mkdir()
    server = start_serve(state_dir, short_dir / "sock" / "s", short_dir, "--no-symbolize",
                         "--textfile-dir", str(textfiles), "--textfile-interval", "1")
    prom = textfiles / "kfence.prom"
    try:
        found = wait_for(lambda: prom.exists() and samples(prom.read_text()))
        assert found[("kfence_processes", (("state", "running"),))] == 1
        assert pids(found) == {str(pid)}
        write_state(state_dir, data, GONE + 20, bugs=4)
        later = wait_for(lambda: (s := samples(prom.read_text()))[("kfence_bugs_total", ())]
                         == 10 and s)
        assert later[("kfence_processes", (("state", "exited"),))] == 4
        # Only the file itself: the next one is written under another name first.
        assert [p.name for p in textfiles.iterdir()] == ["kfence.prom"]
    finally:
        stop_serve(server)
    assert not prom.exists(), "a stopped server's last numbers are not left to be served"


def wait_for(check, timeout: float = 10,
             passing: tuple[type[Exception], ...] = (FileNotFoundError, KeyError, ValueError)):
    """check()'s first true answer; the errors passing say "not yet" (a file half there)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except passing:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail("not seen in time")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_debian("prometheus-node-exporter", "prometheus-node-exporter")
def test_node_exporter_serves_the_metrics_serve_writes(host, short_dir, debian):
    exporter = debian("prometheus-node-exporter", "prometheus-node-exporter")
    pid, state_dir, _ = host
    textfiles = short_dir / "textfiles"
    textfiles.mkdir()
    server = start_serve(state_dir, short_dir / "sock" / "s", short_dir, "--no-symbolize",
                         "--textfile-dir", str(textfiles), "--textfile-interval", "1")
    port = free_port()
    log = short_dir / "node_exporter.log"
    with open(log, "w") as out:
        node = subprocess.Popen(
            [exporter, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={textfiles}"],
            stdout=out, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items()
                                                     if k != "LD_PRELOAD"})
    try:
        def scrape() -> Samples | None:
            if node.poll() is not None:
                pytest.fail(f"node_exporter ended: {log.read_text()[-2000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                found = samples(r.read().decode())
            return found if ("kfence_bugs_total", ()) in found else None

        found = wait_for(scrape, timeout=CAP, passing=(OSError, KeyError))  # OSError: starting
        assert found[("node_textfile_scrape_error", ())] == 0
        assert found[("kfence_info", (("state_version", str(STATE_VERSION)),
                                      ("version", kfence_py.__version__)))] == 1
        assert found[("kfence_processes", (("state", "running"),))] == 1
        assert found[("kfence_bugs_total", ())] == 6
        assert found[("kfence_bugs_total", (("pid", str(pid)),))] == 0
    finally:
        node.terminate()
        node.wait(timeout=CAP)
        stop_serve(server)
