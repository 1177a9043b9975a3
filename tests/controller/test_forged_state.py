"""Forged, corrupt and truncated state files: skipped with a warning, never a crash.

Each bad file is a real state file, written by a real preloaded process, with
one field changed; the readers are the real CLI and a real ``kfence-py serve``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from ctl import CAP, kfence_cli, start_serve, stop_serve
from statefile import copy_state, offset
from statefile import put_u32 as _u32
from statefile import put_u64 as _u64

from kfence_py import lib_path
from kfence_py._native import ffi
from kfence_py.client import request
from kfence_py.options import format_options

GOOD_PID = 4000001  # the copies get pids above pid_max here (32768 by default)
BAD_PID = 4000002


def _header(field: str) -> int:
    return offset(field)


def _first_report(data: bytes) -> int:
    """Offset of the first recorded report (sequence != 0)."""
    (reports,) = struct.unpack_from("=Q", data, _header("reports_offset"))
    (count,) = struct.unpack_from("=I", data, _header("max_reports"))
    size = ffi.sizeof("struct kfence_report")
    for i in range(count):
        if struct.unpack_from("=Q", data, reports + i * size)[0]:
            return reports + i * size
    raise AssertionError("the real state has no report")


def _first_slot(data: bytes) -> int:
    (slots,) = struct.unpack_from("=Q", data, _header("slots_offset"))
    return slots  # every slot is checked, used or not


def _report_field(field: str, value: int) -> Callable[[bytearray], None]:
    def forge(data: bytearray) -> None:
        _u32(data, _first_report(data) + offset(field, "struct kfence_report"), value)
    return forge


def _slot_field(field: str, value: int) -> Callable[[bytearray], None]:
    def forge(data: bytearray) -> None:
        _u32(data, _first_slot(data) + offset(field, "struct kfence_slot"), value)
    return forge


def _header_u32(field: str, value: int) -> Callable[[bytearray], None]:
    return lambda data: _u32(data, _header(field), value)


def _header_u64(field: str, value: int) -> Callable[[bytearray], None]:
    return lambda data: _u64(data, _header(field), value)


def _size_of_file_plus(extra: int) -> Callable[[bytearray], None]:
    return lambda data: _u64(data, _header("total_size"), len(data) + extra)


def _truncate_to(size: int) -> Callable[[bytearray], None]:
    def forge(data: bytearray) -> None:
        del data[size:]
    return forge


FORGERIES: dict[str, Callable[[bytearray], None]] = {
    "huge num_slots": _header_u32("num_slots", 0xFFFFFFFF),
    "num_slots past the reports": _header_u32("num_slots", 1000),
    "huge max_reports": _header_u32("max_reports", 0x7FFFFFFF),
    "slots_offset past the end": _header_u64("slots_offset", 1 << 40),
    "slots_offset wrapping": _header_u64("slots_offset", (1 << 64) - 8),
    "slots_offset inside the header": _header_u64("slots_offset", 8),
    "reports_offset past the end": _header_u64("reports_offset", 1 << 62),
    "total_size bigger than the file": _size_of_file_plus(4096),
    "header_size": _header_u32("header_size", 4096),
    "slot_size": _header_u32("slot_size", 16),
    "report_size": _header_u32("report_size", 1 << 20),
    "report kind": _report_field("kind", 77),
    "report access": _report_field("access", 0xFFFFFFFF),
    "report slot": _report_field("slot", 1 << 20),
    "slot state": _slot_field("state", 9),
    "slot cache": _slot_field("cache", 0x80000000),
    "truncated in the slots": _truncate_to(4096),
    "truncated in the header": _truncate_to(40),
}


@pytest.fixture(scope="module")
def real_state(tmp_path_factory, target) -> bytes:
    """A state file a preloaded process left: 5 objects held, a use-after-free reported."""
    work = tmp_path_factory.mktemp("real")
    state_dir = work / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(lib_path()),
               KFENCE_OPTIONS=format_options({"state_dir": state_dir, "sample_rate": 1}))
    proc = subprocess.run([str(target)], input="hold 5\nuaf\nquit\n", env=env, cwd=work,
                          capture_output=True, text=True, timeout=CAP, check=False)
    assert proc.returncode in (0, 66), proc.stderr
    (state,) = state_dir.glob("*.state")
    return state.read_bytes()


@pytest.fixture
def forged_dir(short_dir, real_state) -> Callable[..., Path]:
    """A state directory: the real state as GOOD_PID, and forged copies."""
    def make(*names: str) -> Path:
        state_dir = short_dir / "forged"
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(mode=0o700)
        (state_dir / f"{GOOD_PID}.state").write_bytes(copy_state(real_state, GOOD_PID))
        for i, name in enumerate(names):
            data = copy_state(real_state, BAD_PID + i)
            FORGERIES[name](data)
            (state_dir / f"{BAD_PID + i}.state").write_bytes(data)
        return state_dir
    return make


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_cli_skips_a_forged_file_and_reads_the_good_one(forged_dir, short_dir, forgery):
    state_dir = forged_dir(forgery)
    run = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    assert run.returncode == 0, f"status {run.returncode}: {run.stderr}"
    doc = json.loads(run.stdout)
    assert [u["path"] for u in doc["unreadable"]] == [str(state_dir / f"{BAD_PID}.state")]
    assert [p["pid"] for p in doc["processes"]] == [GOOD_PID]
    warnings = run.stderr.splitlines()
    assert len(warnings) == 1 and f"{BAD_PID}.state" in warnings[0], run.stderr


@pytest.mark.parametrize("command", ["objects", "reports", "config"])
def test_every_view_skips_every_forgery(forged_dir, short_dir, command):
    state_dir = forged_dir(*FORGERIES)
    run = kfence_cli(command, "--state-dir", str(state_dir), cwd=short_dir)
    assert run.returncode == 0, f"status {run.returncode}: {run.stderr}"
    assert f"pid {GOOD_PID} (exited)" in run.stdout
    assert run.stdout.count("unreadable: ") == len(FORGERIES)
    assert len(run.stderr.splitlines()) == len(FORGERIES), run.stderr


def test_a_running_server_survives_every_forgery_at_once(forged_dir, short_dir):
    state_dir = forged_dir(*FORGERIES)
    sock = short_dir / "sock" / "s"
    server = start_serve(state_dir, sock, short_dir, "--no-symbolize")
    try:
        for endpoint in ("/stats", "/objects", "/reports", "/config", "/metrics"):
            reply = request(sock, "GET", endpoint, query={"format": "json"})
            assert reply.status == 200, (endpoint, reply.text)
            if endpoint != "/metrics":
                doc = json.loads(reply.text)
                assert len(doc["unreadable"]) == len(FORGERIES)
                assert str(GOOD_PID) in reply.text
        assert "kfence_unreadable_state_files " + str(len(FORGERIES)) in request(
            sock, "GET", "/metrics").text
    finally:
        log = stop_serve(server)
    # one line per bad file, not one per request
    assert sum("skipped" in line for line in log.splitlines()) == len(FORGERIES), log


def test_truncated_while_a_reader_holds_it(forged_dir, short_dir):
    """The file shrinks after it was opened: the reader keeps what it read (no SIGBUS)."""
    state_dir = forged_dir()
    path = state_dir / f"{GOOD_PID}.state"
    script = textwrap.dedent(f"""
        import os
        from kfence_py.state import StateView
        view = StateView.open({str(path)!r})
        os.truncate({str(path)!r}, 100)
        print(view.stats().pool_size, len(view.objects()), len(view.reports()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=short_dir, timeout=CAP, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}: {proc.stderr}"
    pool, objects, reports = map(int, proc.stdout.split())
    assert pool > 0 and objects >= 5 and reports == 1
    # read again now, the short file is skipped
    run = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    assert run.returncode == 0 and "truncated" in run.stderr, run.stderr
    assert json.loads(run.stdout)["processes"] == []
