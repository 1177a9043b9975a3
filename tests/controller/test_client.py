"""The client commands on state files: stats, objects, reports, config; post-mortem."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys

import pytest
from ctl import Driven, kfence_cli

from kfence_py.exitcodes import ExitCode

# The 1 h time gate samples the first allocation and then nothing: a quiet baseline.
QUIET = {"sample_interval": 3600000}


def allocations(pid: int, state_dir, cwd) -> int:
    run = kfence_cli("stats", "--pid", str(pid), "--state-dir", str(state_dir), "--json",
                     cwd=cwd)
    assert run.returncode == 0, run.stderr
    (proc,) = json.loads(run.stdout)["processes"]
    return proc["stats"]["total_allocations"]


@pytest.mark.slow
def test_runtime_reconfiguration_is_seen_in_the_counters(start_target, short_dir):
    driven, pid, state_dir = start_target(QUIET)

    def churn(n: int) -> int:
        before = allocations(pid, state_dir, short_dir)
        assert driven.ask(f"churn {n}") == "ok"
        return allocations(pid, state_dir, short_dir) - before

    assert churn(1000) == 0, "the time gate is closed for an hour"

    config = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir),
                        "sample_rate=1", cwd=short_dir)
    assert config.returncode == 0, config.stderr
    assert f"pid {pid} (running): enabled=1 sample_interval=3600000 sample_rate=1" \
        in config.stdout
    # Seen at the thread's next look at the clock, within 256 allocations.
    assert churn(1000) >= 1000 - 256

    pause = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir),
                       "enabled=0", cwd=short_dir)
    assert pause.returncode == 0 and "enabled=0" in pause.stdout
    assert churn(1000) == 0, "paused: sample_rate=1 looks at every allocation"

    resume = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir),
                        "enabled=1", cwd=short_dir)
    assert resume.returncode == 0
    # A paused thread looks again after 65536 allocations.
    assert churn(70000) > 0


@pytest.mark.slow
def test_config_rejects_what_cannot_change(start_target, short_dir):
    _, pid, state_dir = start_target(QUIET)
    for change, message in (("num_objects=3", "cannot change at run time"),
                            ("sample_interval=-1", "sample_interval: expected an integer in 0.."),
                            ("burst", "expected KEY=VALUE")):
        run = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir), change,
                         cwd=short_dir)
        assert run.returncode == ExitCode.USAGE, run.stderr
        assert message in run.stderr and "Traceback" not in run.stderr
    show = kfence_cli("config", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    (proc,) = json.loads(show.stdout)["processes"]
    assert proc["sample_interval"] == 3600000, "nothing changed"


def test_pid_alone_finds_the_state_file_of_a_running_process(start_target, short_dir):
    _, pid, _ = start_target()
    run = kfence_cli("stats", "--pid", str(pid), cwd=short_dir)
    assert run.returncode == 0, run.stderr
    assert f"pid {pid} (running):" in run.stdout and "total allocations:" in run.stdout


def test_post_mortem_after_sigkill(start_target, short_dir):
    driven, pid, state_dir = start_target({"sample_rate": 1})
    assert driven.ask("hold 6") == "ok"
    alive = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    driven.proc.kill()
    assert driven.finish() == -9

    dead = kfence_cli("stats", "--pid", str(pid), "--state-dir", str(state_dir), "--json",
                      cwd=short_dir)
    assert dead.returncode == 0, dead.stderr
    (before,) = json.loads(alive.stdout)["processes"]
    (after,) = json.loads(dead.stdout)["processes"]
    assert before["running"] is True and after["running"] is False
    assert after["stats"] == before["stats"], "the counters as the process left them"
    assert after["stats"]["currently_allocated"] >= 6

    objects = kfence_cli("objects", "--pid", str(pid), "--state-dir", str(state_dir), "--json",
                         cwd=short_dir)
    held = [o for o in json.loads(objects.stdout)["objects"]
            if o["size"] == 48 and o["state"] == "allocated"]
    assert len(held) == 6 and all(o["allocated"]["stack"] for o in held)
    text = kfence_cli("objects", "--pid", str(pid), "--state-dir", str(state_dir),
                      cwd=short_dir)
    assert f"pid {pid} (exited)" in text.stdout and "size=48, cache=malloc" in text.stdout


def test_reports_from_the_state(start_target, short_dir):
    driven, pid, state_dir = start_target({"sample_rate": 1})
    assert driven.ask("uaf") == "ok"
    run = kfence_cli("reports", "--pid", str(pid), "--state-dir", str(state_dir), "--json",
                     cwd=short_dir)
    (report,) = json.loads(run.stdout)["reports"]
    assert report["kind"] == "use-after-free" and report["access"] == "write"
    assert report["stack"][0]["source"][0]["function"] == "main"
    text = kfence_cli("reports", "--state-dir", str(state_dir), cwd=short_dir).stdout
    assert "BUG: KFENCE: use-after-free write in main" in text and "target.c:" in text


def test_fork_children_are_listed(start_target, short_dir):
    driven, pid, state_dir = start_target({"sample_rate": 1})
    answer = driven.ask("fork")
    assert answer.startswith("child ")
    child = int(answer.split()[1])
    assert driven.readline() == "ok"
    run = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    procs = {p["pid"]: p for p in json.loads(run.stdout)["processes"]}
    assert set(procs) == {pid, child} and all(p["running"] for p in procs.values())
    assert procs[child]["stats"]["currently_allocated"] >= 3
    text = kfence_cli("stats", "--state-dir", str(state_dir), cwd=short_dir).stdout
    assert "processes: 2 (2 running)" in text
    assert driven.finish() == 0, "the target ends its child at the end of its input"
    after = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    assert not any(p["running"] for p in json.loads(after.stdout)["processes"])


# --- failures are one line and a known exit status ------------------------------------


def _one_plain_line(run, code: ExitCode, text: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("kfence-py: ")
    assert text in run.stderr and "Traceback" not in run.stderr


def test_missing_socket(short_dir):
    run = kfence_cli("stats", "--socket", str(short_dir / "nothing"), cwd=short_dir)
    _one_plain_line(run, ExitCode.NO_SERVER, "no socket at")


def test_refused_connection(short_dir):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "stale"))
    stale.close()
    run = kfence_cli("reports", "--socket", str(short_dir / "stale"), cwd=short_dir)
    _one_plain_line(run, ExitCode.REFUSED, "connection refused")


def test_no_state_file(short_dir):
    run = kfence_cli("stats", "--pid", "1", "--state-dir", str(short_dir), cwd=short_dir)
    _one_plain_line(run, ExitCode.NO_SERVER, "no state file for pid 1")
    run = kfence_cli("stats", "--state-dir", str(short_dir / "none"), cwd=short_dir)
    _one_plain_line(run, ExitCode.NO_SERVER, "no such state directory")
    run = kfence_cli("stats", cwd=short_dir)
    _one_plain_line(run, ExitCode.USAGE, "--socket PATH, --pid N or --state-dir DIR")


def test_state_of_another_version_or_truncated(start_target, short_dir):
    _, pid, state_dir = start_target()
    copies = short_dir / "copies"
    copies.mkdir(mode=0o700)
    copy = copies / f"{pid}.state"
    shutil.copyfile(state_dir / f"{pid}.state", copy)
    with open(copy, "r+b") as f:
        f.seek(8)  # magic[8], then uint32 version
        f.write(struct.pack("<I", 99))
    run = kfence_cli("stats", "--pid", str(pid), "--state-dir", str(copies), cwd=short_dir)
    _one_plain_line(run, ExitCode.VERSION_MISMATCH, "state version 99")

    shutil.copyfile(state_dir / f"{pid}.state", copy)
    os.truncate(copy, 4096)
    run = kfence_cli("objects", "--pid", str(pid), "--state-dir", str(copies), cwd=short_dir)
    _one_plain_line(run, ExitCode.BAD_STATE, "truncated state")


def test_serve_a_state_directory(start_target, short_dir, tmp_path):
    _, pid, state_dir = start_target()
    sock = short_dir / "sock" / "s"
    server = Driven([sys.executable, "-m", "kfence_py", "serve", "--state-dir", str(state_dir),
                     "--socket", str(sock)], os.environ, tmp_path, merge_stderr=True)
    try:
        assert server.readline() == f"kfence-py: serving {state_dir} on {sock}"
        run = kfence_cli("stats", "--socket", str(sock), "--json", cwd=short_dir)
        assert run.returncode == 0, run.stderr
        assert [p["pid"] for p in json.loads(run.stdout)["processes"]] == [pid]
        config = kfence_cli("config", "--socket", str(sock), "burst=3", cwd=short_dir)
        assert config.returncode == 0 and "burst=3" in config.stdout
    finally:
        server.proc.terminate()
        assert server.finish() == 0
    assert not sock.exists()


@pytest.mark.parametrize("command", ["stats", "objects", "reports", "config"])
def test_json_of_every_view(start_target, short_dir, command):
    driven, pid, state_dir = start_target({"sample_rate": 1})
    assert driven.ask("uaf") == "ok"
    run = kfence_cli(command, "--state-dir", str(state_dir), "--json", cwd=short_dir)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["protocol"] == 1 and doc["source"] == str(state_dir)
    assert str(pid) in run.stdout
