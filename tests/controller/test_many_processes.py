"""Many state files: every request answered under a low descriptor limit, and the
retention rule of a state directory, applied by ``run`` and by ``serve``."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

import pytest
from ctl import CAP, kfence_cli, start_serve, stop_serve
from prometheus_client.parser import text_string_to_metric_families
from statefile import write_state

from kfence_py.client import request

GONE = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid or more
FD_LIMIT = 128


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def real_state(start_target) -> tuple[bytes, int, Path]:
    """A real state file (one slot, so copies stay small), its running writer and dir."""
    driven, pid, state_dir = start_target({"sample_rate": 1, "num_objects": 1})
    assert driven.ask("hold 1") == "ok"
    return (state_dir / f"{pid}.state").read_bytes(), pid, state_dir


@pytest.mark.slow
def test_a_thousand_state_files_under_a_low_descriptor_limit(real_state, short_dir):
    data, writer, state_dir = real_state
    count = 1000
    for i in range(count):
        write_state(state_dir, data, GONE + i, bugs=1)  # buggy: kept by the retention rule
    sock = short_dir / "sock" / "s"
    server = start_serve(state_dir, sock, short_dir, "--no-symbolize", preexec_fn=_low_fd_limit)
    try:
        for _ in range(3):
            reply = request(sock, "GET", "/stats", query={"format": "json"})
            assert reply.status == 200, reply.text[:500]
            doc = json.loads(reply.text)
            assert len(doc["processes"]) == count + 1 and doc["unreadable"] == []
            running = [p["pid"] for p in doc["processes"] if p["running"]]
            assert running == [writer]
        for endpoint in ("/objects", "/reports", "/config", "/metrics"):
            reply = request(sock, "GET", endpoint)
            assert reply.status == 200, (endpoint, reply.text[:500])
        # The exited processes add up in one series: no label per pid that has gone.
        samples = [s for family in text_string_to_metric_families(reply.text)
                   for s in family.samples]
        assert {s.labels.get("pid") for s in samples} == {None, str(writer)}
        bugs = {s.labels.get("pid"): s.value for s in samples if s.name == "kfence_bugs_total"}
        assert bugs == {None: count, str(writer): 0}
    finally:
        stop_serve(server)


def _pids(state_dir: Path) -> set[int]:
    return {int(p.stem) for p in state_dir.glob("*.state")}


@pytest.fixture
def crowded(real_state, short_dir):
    """A state dir: the running writer, 30 clean exited (newest first: GONE, GONE+1...),
    5 buggy exited ones older than all, a file not a state, and a state whose pid now
    belongs to another running process."""
    data, writer, state_dir = real_state
    now = time.time_ns()
    clean = [GONE + i for i in range(30)]
    for i, pid in enumerate(clean):
        write_state(state_dir, data, pid, bugs=0, start_realtime_ns=now - (i + 1) * 10**9)
    buggy = [GONE + 100 + i for i in range(5)]
    for pid in buggy:
        write_state(state_dir, data, pid, bugs=2, start_realtime_ns=now - 10**12)
    junk = state_dir / f"{GONE + 200}.state"
    junk.write_bytes(b"not a state")
    other = subprocess.Popen(["sleep", str(CAP)])
    write_state(state_dir, data, other.pid, bugs=0, start_realtime_ns=now - 10**12)
    yield data, writer, state_dir, clean, buggy, other.pid
    other.kill()
    other.wait()


def test_run_prunes_its_state_dir_at_the_end(crowded, short_dir):
    _, writer, state_dir, clean, buggy, recycled = crowded
    run = kfence_cli("run", "--state-dir", str(state_dir), "--keep-clean", "10", "--",
                     "/bin/true", cwd=short_dir)
    assert run.returncode == 0, run.stderr
    left = _pids(state_dir)
    ran = left - {writer, *clean, *buggy, GONE + 200}
    assert len(ran) == 1, left  # the state of /bin/true, the newest clean exited one
    # kept: the running writer, every buggy one, the unreadable one, the 10 newest clean
    # ones (/bin/true's and 9 copies); the state of a pid now another process's is gone
    assert left == {writer, *buggy, GONE + 200, *ran, *clean[:9]}
    assert recycled not in left


def test_serve_prunes_when_it_starts(crowded, short_dir):
    _, writer, state_dir, clean, buggy, recycled = crowded
    sock = short_dir / "sock" / "s"
    server = start_serve(state_dir, sock, short_dir, "--no-symbolize", "--keep-clean", "3")
    try:
        assert _pids(state_dir) == {writer, *buggy, GONE + 200, *clean[:3]}
        assert recycled not in _pids(state_dir)
        doc = json.loads(request(sock, "GET", "/stats", query={"format": "json"}).text)
        assert {p["pid"] for p in doc["processes"]} == {writer, *buggy, *clean[:3]}
    finally:
        stop_serve(server)


def test_keep_clean_must_be_a_count(short_dir):
    run = kfence_cli("run", "--keep-clean", "²", "--", "/bin/true", cwd=short_dir)
    assert run.returncode == 2 and "expected a count" in run.stderr
