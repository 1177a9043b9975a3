"""`kfence-py run`: options, preload, signals, exit status, reports, refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from ctl import CAP, PROGS, Driven, kfence_cli, line_of

from kfence_py.client import request
from kfence_py.exitcodes import ExitCode
from kfence_py.options import option_specs

RUN = [sys.executable, "-m", "kfence_py", "run"]
TOOLS = {"llvm-symbolizer": "llvm-symbolizer", "addr2line": "addr2line", "dwarf": None}


def run_target(target, cwd, *flags: str) -> tuple[Driven, int]:
    """target.c under `kfence-py run`, and its pid.  No core files from it."""
    argv = " ".join(f"'{a}'" for a in [*RUN, *flags, "--", str(target)])
    driven = Driven(["/bin/sh", "-c", f"ulimit -c 0; exec {argv}"], os.environ, cwd)
    ready = driven.readline()
    assert ready.startswith("ready "), ready
    return driven, int(ready.split()[1])


def test_a_flag_for_every_option():
    helptext = kfence_cli("run", "--help", cwd=PROGS).stdout
    for name in option_specs():
        assert f"--{name.replace('_', '-')}" in helptext, name


def test_a_bad_option_value_is_a_usage_error(short_dir, target):
    run = kfence_cli("run", "--sample-rate", "lots", "--", str(target), cwd=short_dir)
    assert run.returncode == 2 and "sample_rate: expected an integer" in run.stderr
    run = kfence_cli("run", "--placement", "middle", "--", str(target), cwd=short_dir)
    assert run.returncode == 2 and "placement: expected random, left or right" in run.stderr


def test_flags_become_kfence_options(short_dir, target):
    sock = short_dir / "sock" / "s"
    driven, _ = run_target(target, short_dir, "--socket", str(sock), "--sample-rate", "1",
                           "--num-objects", "4", "--burst", "2")
    try:
        assert driven.ask("hold 10") == "ok"
        (proc,) = request(sock, "GET", "/stats", query={"format": "json"}).json()["processes"]
        stats = proc["stats"]
        assert (stats["pool_size"], stats["sample_rate"], stats["burst"]) == (4, 1, 2)
        skipped = stats["skipped"]
        assert stats["currently_allocated"] == 4 and skipped["capacity"] + skipped["covered"] >= 6
    finally:
        assert driven.finish() == 0


def test_stdin_stdout_and_exit_status(short_dir, target):
    run = kfence_cli("run", "--", str(target), input="churn 10\nexit 3\n", cwd=short_dir)
    assert run.returncode == 3, run.stderr
    assert run.stdout.splitlines()[1:] == ["ok"]


def test_death_by_signal_is_128_plus_the_signal(short_dir, target):
    run = kfence_cli("run", "--", str(target), input="raise 9\n", cwd=short_dir)
    assert run.returncode == 128 + signal.SIGKILL


def test_bugs_make_the_exitcode(short_dir, target):
    run = kfence_cli("run", "--sample-rate", "1", "--", str(target), input="uaf\nquit\n",
                     cwd=short_dir)
    assert run.returncode == 66 and "BUG: KFENCE: use-after-free write" in run.stderr
    run = kfence_cli("run", "--sample-rate", "1", "--exitcode", "9", "--", str(target),
                     input="uaf\nquit\n", cwd=short_dir)
    assert run.returncode == 9


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT,
                                   signal.SIGQUIT])
def test_signals_are_passed_on(short_dir, target, signo):
    if signal.getsignal(signo) == signal.SIG_IGN:
        pytest.skip("the tests were started with this signal ignored, and so is the command")
    driven, _ = run_target(target, short_dir)
    if signo == signal.SIGTERM:
        assert driven.ask("trap-term") == "ok"
    os.kill(driven.proc.pid, signo)  # to kfence-py, not to the command
    if signo == signal.SIGTERM:
        assert driven.readline() == "got signal 15"
        assert driven.finish() == 7, "the command's own handler ran and chose the status"
    else:
        # Its stdin stays open: only the signal can end it.
        assert driven.proc.wait(timeout=CAP) == 128 + signo
        driven.finish()


# Runs `kfence-py -v run -- target` on a pseudo-terminal, types ^C once, and reports.
_TERMINAL = r"""
import os, pty, sys, termios
pid, master = pty.fork()
if pid == 0:
    attrs = termios.tcgetattr(0)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    os.execv(sys.argv[1], sys.argv[1:])
pending = b""
def until(prefix):
    global pending
    while True:
        while b"\n" not in pending:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                sys.exit(f"no {prefix!r} in {pending!r}")
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        line = line.decode().strip()
        if prefix in line:
            return line
until("ready")
os.write(master, b"trap-int\n")
until("ok")
os.write(master, b"\x03")
print(until("signal 2"))
os.write(master, b"interrupts\n")
print(until("interrupts"))
os.write(master, b"quit\n")
print("status", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_key_typed_at_the_terminal_reaches_the_command_once(short_dir, target):
    # ^C signals the whole foreground group, the command included: kfence-py must
    # not send it a second one.
    proc = subprocess.run([sys.executable, "-c", _TERMINAL, sys.executable, "-m", "kfence_py",
                           "-v", "run", "--", str(target)], capture_output=True, text=True,
                          timeout=CAP, cwd=short_dir, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decision, count, status = proc.stdout.splitlines()
    assert "signal 2 came from the terminal" in decision
    assert count == "interrupts 1"
    assert status == "status 0"


def test_other_stderr_passes_through(short_dir):
    run = kfence_cli("run", "--", "/bin/sh", "-c", "echo to-stderr >&2; echo to-stdout",
                     cwd=short_dir)
    assert run.returncode == 0
    program, *ours = run.stderr.splitlines()
    assert program == "to-stderr" and run.stdout == "to-stdout\n"
    assert ours and all(line.startswith("kfence-py: ") for line in ours), "only the summary"


def test_fork_children_are_followed(short_dir, target):
    sock = short_dir / "sock" / "s"
    driven, pid = run_target(target, short_dir, "--socket", str(sock), "--sample-rate", "1")
    try:
        child = int(driven.ask("fork").split()[1])
        assert driven.readline() == "ok"
        doc = request(sock, "GET", "/stats", query={"format": "json"}).json()
        assert {p["pid"] for p in doc["processes"]} == {pid, child}
        objects = request(sock, "GET", "/objects", query={"pid": child}).text
        assert f"pid {child} (running): " in objects
    finally:
        assert driven.finish() == 0
    assert not sock.exists(), "the socket goes with the run"


def test_state_dir_is_kept_when_given(short_dir, target):
    state_dir = short_dir / "kept"
    run = kfence_cli("run", "--state-dir", str(state_dir), "--sample-rate", "1", "--",
                     str(target), input="hold 2\nquit\n", cwd=short_dir)
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split()[1])
    stats = kfence_cli("stats", "--state-dir", str(state_dir), cwd=short_dir).stdout
    assert f"pid {pid} (exited):" in stats


def test_reports_are_symbolized_and_written_as_json(short_dir, uaf_program):
    records = short_dir / "reports.jsonl"
    run = kfence_cli("run", "--sample-rate", "1", "--json-reports", str(records), "--",
                     str(uaf_program), cwd=short_dir)
    assert run.returncode == 66
    source = PROGS / "uaf.c"
    assert f"in touch {source}:{line_of('TOUCH')}" in run.stderr
    assert f"in make_record {source}:{line_of('ALLOC')}" in run.stderr
    assert f"in retire {source}:{line_of('FREE')}" in run.stderr
    (line,) = records.read_text().splitlines()
    record = json.loads(line)
    assert record["kind"] == "use-after-free" and record["access"] == "write"
    assert record["function"] == "touch" and record["object"]["size"] == 40
    top = record["stack"][0]["source"]
    assert (top[0]["file"], top[0]["line"]) == (str(source), line_of("INLINED"))
    alloc_top = record["allocated"]["stack"][0]["source"][-1]
    assert (alloc_top["function"], alloc_top["line"]) == ("make_record", line_of("ALLOC"))


@pytest.mark.parametrize("backend", list(TOOLS))
def test_symbolize_a_report_from_elsewhere(programs, uaf_program, short_dir, backend):
    if TOOLS[backend] and shutil.which(TOOLS[backend]) is None:
        pytest.skip(f"{backend} not installed")
    raw = programs.run(uaf_program, options={"sample_rate": 1})
    assert raw.returncode == 66 and "uaf.c" not in raw.stderr
    run = kfence_cli("symbolize", "--symbolizer", backend, input=raw.stderr, cwd=short_dir)
    assert run.returncode == 0, run.stderr
    source = PROGS / "uaf.c"
    lines = run.stdout.splitlines()
    # The faulting instruction is exact; the other frames are return addresses.
    access = next(i for i, x in enumerate(lines) if x.startswith("Use-after-free write at"))
    if backend == "dwarf":  # no inlined frames from the line table alone
        assert f"in touch {source}:{line_of('INLINED')}" in lines[access + 1]
    else:
        assert lines[access + 1].startswith(" #0 ")
        assert f"in poke {source}:{line_of('INLINED')}" in lines[access + 1]
        assert lines[access + 1].endswith("(inlined)")
        assert f"in touch {source}:{line_of('TOUCH')}" in lines[access + 2]
        assert lines[access + 2].startswith(" #0 ")
    assert f"in make_record {source}:{line_of('ALLOC')}" in run.stdout
    assert f"in retire {source}:{line_of('FREE')}" in run.stdout
    # Lines that are not frames are as they were.
    kept = [x for x in raw.stderr.splitlines() if not x.startswith(" #")]
    assert [x for x in lines if not x.startswith(" #")] == kept


# --- where the preload cannot work ----------------------------------------------------


def test_refuses_a_setuid_binary(short_dir, target):
    copy = short_dir / "setuid-copy"
    shutil.copy(target, copy)
    os.chmod(copy, 0o4755)
    run = kfence_cli("run", "--", str(copy), cwd=short_dir)
    assert run.returncode == ExitCode.CANNOT_PRELOAD == 126
    assert "is setuid" in run.stderr and run.stderr.count("\n") == 1


def test_refuses_a_static_binary(short_dir):
    exe = short_dir / "static"
    build = subprocess.run(["gcc", "-static", "-O0", str(PROGS / "target.c"), "-o", str(exe)],
                           capture_output=True, text=True, check=False)
    if build.returncode:
        pytest.skip(f"cannot link statically (no libc.a?): {build.stderr.strip()[:200]}")
    run = kfence_cli("run", "--", str(exe), cwd=short_dir)
    assert run.returncode == ExitCode.CANNOT_PRELOAD
    assert "statically linked" in run.stderr and "Traceback" not in run.stderr


def test_missing_command_and_no_command(short_dir):
    run = kfence_cli("run", "--", "no-such-command-kfence", cwd=short_dir)
    assert run.returncode == ExitCode.NOT_FOUND == 127
    assert "command not found" in run.stderr
    run = kfence_cli("run", cwd=short_dir)
    assert run.returncode == ExitCode.USAGE and "no command" in run.stderr


def test_a_bad_socket_path_fails_before_the_command_starts(short_dir, target):
    run = kfence_cli("run", "--socket", str(short_dir / ("x" * 120)), "--", str(target),
                     input="quit\n", cwd=short_dir)
    assert run.returncode == ExitCode.RUN_FAILED and "at most 107" in run.stderr
    assert "ready" not in run.stdout


def _sample_rate(short_dir, state_dir, pid) -> int:
    shown = kfence_cli("config", "--state-dir", str(state_dir), "--pid", str(pid), "--json",
                       cwd=short_dir)
    (proc,) = json.loads(shown.stdout)["processes"]
    return proc["sample_rate"]


@pytest.mark.slow
@pytest.mark.parametrize("adapt", [True, False], ids=["adapt", "no-adapt"])
def test_the_controller_widens_the_gate_of_a_full_pool(short_dir, target, adapt):
    """A pool full of held objects: run doubles sample_rate, up to --max-sample-rate,
    and says so in stats; with --no-adapt it leaves it alone."""
    state_dir = short_dir / ("adapt" if adapt else "fixed")
    driven, pid = run_target(target, short_dir, "--state-dir", str(state_dir),
                             "--sample-rate", "1", "--num-objects", "8",
                             "--skip-covered-thresh", "100", "--max-sample-rate", "4",
                             *([] if adapt else ["--no-adapt"]))
    try:
        assert driven.ask("hold 20") == "ok"
        deadline = time.monotonic() + CAP
        while adapt and _sample_rate(short_dir, state_dir, pid) < 4:
            assert time.monotonic() < deadline, "the gate was not widened"
            time.sleep(0.2)
        if not adapt:
            time.sleep(2.5)  # two looks of a governor, were there one
        assert _sample_rate(short_dir, state_dir, pid) == (4 if adapt else 1)
        stats = kfence_cli("stats", "--state-dir", str(state_dir), cwd=short_dir).stdout
        assert "pool use: 100%" in stats
        if adapt:
            assert "controller's last change: " in stats
            assert "sample_rate 2 -> 4: pool 100% full" in stats, stats
            # Room again: back to what was asked for, and no further.
            assert driven.ask("release") == "ok"
            while _sample_rate(short_dir, state_dir, pid) > 1:
                assert time.monotonic() < deadline + CAP, "the gate was not narrowed back"
                time.sleep(0.2)
            stats = kfence_cli("stats", "--state-dir", str(state_dir), cwd=short_dir).stdout
            assert re.search(r"sample_rate 2 -> 1: pool \d+% full: back towards the "
                             r"sample_rate asked for \(1\)", stats), stats
        else:
            assert "controller's last change" not in stats
    finally:
        assert driven.finish() == 0
