"""The preloaded library never harms its host: hangs, kills and false reports
that real programs met (issue 9, items 1-4 and 7)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import kfence_py
from kfence_py.reports import parse_reports
from kfence_py.state import StateView

EXITCODE = 66


@pytest.fixture(scope="module")
def host(programs):
    return programs.build("host.c")


def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def preload_env(options: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env["LD_PRELOAD"] = str(kfence_py.lib_path())
    env["KFENCE_OPTIONS"] = options
    return env


# --- 1. registered unwind frames (JITs) -------------------------------------

@pytest.mark.parametrize("options", ["sample_rate=1", ""])
def test_registered_unwind_frames_do_not_deadlock(programs, host, options):
    """libgcc's unwinder mallocs under its lock once frames are registered."""
    run = programs.run(host, "jit", options=options, timeout=30)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[1]) > 1  # backtrace still unwinds
    assert run.reports == []


def test_stacks_are_as_deep_as_before(programs, host):
    """The guard against the unwinder's lock leaves ordinary stacks whole."""
    run = programs.run(host, "exit", "none", options="sample_rate=1:placement=right")
    [report] = run.reports
    assert report.kind == "out-of-bounds" and report.access == "write"
    assert report.function == "overflow"
    names = [f.function for f in report.stack]
    assert names[:3] == ["overflow", "exits", "main"]


# --- 2. the state file on a full file system or under ulimit -f ----------------

def in_tiny_tmpfs(size: str, tmp_path: Path, command: list[str], env: dict[str, str],
                  *, full: bool = False):
    """Run command with env added, and a tmpfs of the given size at tmp_path/fs (filled
    up first if full), in a mount namespace of its own (the machine's mounts are not
    touched)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    fs = tmp_path / "fs"
    fs.mkdir()
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, check=False)
    if probe.returncode:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    # Only the command itself is preloaded, not the shell that mounts.
    script = ('mount -t tmpfs -o size="$1",mode=0700 tmpfs "$2" || exit 99; '
              + ('cat /dev/zero > "$2/filler" 2>/dev/null; ' if full else '')
              + 'shift 2 && exec env "$@"')
    assignments = [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", size, str(fs), *assignments, *command],
                          cwd=tmp_path,  # not a source tree: `python -m` imports from the cwd
                          capture_output=True, text=True, timeout=60, check=False)


def preload_vars(options: str) -> dict[str, str]:
    return {"LD_PRELOAD": str(kfence_py.lib_path()), "KFENCE_OPTIONS": options}


def test_state_dir_on_a_full_file_system(host, tmp_path):
    """Not even the header fits: the state stays private, one warning."""
    env = preload_vars(f"sample_rate=1:state_dir={tmp_path}/fs")
    proc = in_tiny_tmpfs("64k", tmp_path, [str(host), "hello"], env, full=True)
    assert proc.returncode == 0, proc.stderr  # was SIGBUS
    assert proc.stdout == "hello\n"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("kfence:")]
    assert len(warnings) == 1 and "keeping it private" in warnings[0], proc.stderr
    assert parse_reports(proc.stderr) == []


def test_state_dir_filling_up(host, tmp_path):
    """The files grow slot by slot until the file system is full: no new slots after
    that, one warning, no SIGBUS."""
    env = preload_vars(f"sample_rate=1:state_dir={tmp_path}/fs/state")
    proc = in_tiny_tmpfs("200k", tmp_path, [str(host), "fork_alloc", "200"], env)
    assert proc.returncode == 0, proc.stderr  # was SIGBUS
    assert proc.stdout == "child ok\nchild status 0\n"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("kfence:")]
    assert len(warnings) == 1 and "no new pool slots will be used" in warnings[0], proc.stderr
    assert parse_reports(proc.stderr) == []


def test_kfence_py_run_on_a_full_file_system(tmp_path):
    env = {"TMPDIR": f"{tmp_path}/fs"}
    proc = in_tiny_tmpfs("16k", tmp_path, [sys.executable, "-m", "kfence_py", "run",
                                           "--sample-rate", "1", "--",
                                           "/bin/echo", "hi"], env, full=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"


def test_file_size_limit_is_never_exceeded(host, tmp_path):
    """Under ulimit -f the state file would raise SIGXFSZ: it stays private instead."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([str(host), "hello"], env=preload_env(
        f"sample_rate=1:state_dir={state_dir(tmp_path)}"), preexec_fn=limit,
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr  # was SIGXFSZ
    assert proc.stdout == "hello\n"
    assert "File too large; keeping it private" in proc.stderr


# --- 3. raw clone() -----------------------------------------------------------

def test_raw_clone_child_takes_its_own_state(programs, host, tmp_path):
    """No atfork handler runs: the child must still not share the parent's slots."""
    for _ in range(3):
        run = programs.run(host, "clone", options={"sample_rate": 1,
                                                   "state_dir": state_dir(tmp_path)})
        assert run.reports == [], run.stderr  # was 64 false invalid frees
        assert run.returncode == 0 and "child status 0" in run.stdout
        shutil.rmtree(tmp_path / "state")


def test_sandboxed_child_is_not_killed_by_its_own_state(programs, host, tmp_path):
    """seccomp forbids what a child's sparse state file needs later: it is done before."""
    run = programs.run(host, "sandbox", options={"sample_rate": 1,
                                                 "state_dir": state_dir(tmp_path)})
    assert "child status 0" in run.stdout, run.stdout + run.stderr  # was SIGSYS
    assert run.reports == [] and run.returncode == 0


# --- 4. exits that skip exit handlers -------------------------------------------

@pytest.mark.parametrize("how", ["_exit", "_Exit", "quick_exit"])
def test_exitcode_after_exits_that_skip_handlers(programs, host, how):
    run = programs.run(host, "exit", how, options="sample_rate=1:placement=right")
    [report] = run.reports
    assert report.kind == "out-of-bounds" and report.function == "overflow"
    assert run.returncode == EXITCODE


def test_vfork_child_keeps_its_own_status(programs, host):
    """A vfork child shares its parent's memory, not its parent's bugs."""
    run = programs.run(host, "exit", "vfork", options="sample_rate=1:placement=right")
    assert "child status 0" in run.stdout
    assert run.returncode == EXITCODE


# --- 7. fork with a state file ------------------------------------------------------

def test_forked_child_state_is_its_own_and_sparse(host, tmp_path):
    sd = state_dir(tmp_path)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(host), "fork", str(fifo)], env=preload_env(
        f"sample_rate=1:placement=right:num_objects=4096:state_dir={sd}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = 0
    try:
        line = proc.stdout.readline()
        assert line.startswith("child "), line
        child = int(line.split()[1])
        path = sd / f"{child}.state"
        view = StateView.open(path)
        stats = view.stats()
        size = view.header.total_size
        assert stats.pid == child
        assert stats.total_bugs == 0  # the parent's bug is not the child's
        # What it inherited is live in the child although the parent freed its copies.
        inherited = [o for o in view.objects() if o.size == 64]
        assert [o.state for o in inherited] == ["allocated"] * 8
        assert stats.currently_allocated >= 8
        # Sparse: header, the slots in use and the report ring, not 4096 slots.
        assert path.stat().st_blocks * 512 < size // 10
        del view
        with open(fifo, "w") as f:
            f.write("x")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        if child and proc.returncode is None:
            os.kill(child, signal.SIGKILL)  # stopped at the FIFO
    assert "child status 0" in out
    reports = parse_reports(err)
    assert [r.kind for r in reports] == ["out-of-bounds"]  # the parent's, once
    assert proc.returncode == EXITCODE


def test_parent_and_child_free_their_copies_at_once(programs, host, tmp_path):
    """The child's copy of a slot the parent is freeing must be the child's object."""
    run = programs.run(host, "fork_free", "50", options={"sample_rate": 1,
                                                         "state_dir": state_dir(tmp_path)})
    assert run.reports == [], run.stderr  # was a false invalid free now and then
    assert "bad children 0" in run.stdout


def test_signal_handler_during_adoption(programs, host, tmp_path):
    """A handler that frees while its thread takes the state waits, not hangs."""
    run = programs.run(host, "timer", options={"sample_rate": 1, "num_objects": 4096,
                                               "state_dir": state_dir(tmp_path)})
    assert "child status 0" in run.stdout, run.stdout  # was killed by its alarm
    assert run.reports == []


def test_many_forks_write_only_live_content(programs, host, tmp_path):
    sd = state_dir(tmp_path)
    run = programs.run(host, "forks", "40", options={
        "sample_rate": 1, "num_objects": 4096, "state_dir": sd})
    assert run.returncode == 0 and run.reports == []
    files = sorted(sd.glob("*.state"))
    assert len(files) == 41
    view = StateView.open(files[0])
    total = view.header.total_size
    used = [f.stat().st_blocks * 512 for f in files]
    assert max(used) < total // 10, used  # was the whole state in every child


# --- the leak scan and the library's own memory -----------------------------------

def test_leak_scan_reads_program_memory_merged_with_ours(programs, host):
    """Our records point at every object; the program's tables beside them still count."""
    run = programs.run(host, "tables", options="sample_rate=1:leak_check=1")
    assert run.reports == [], run.stderr  # was a false memory leak
    assert run.returncode == 0
