"""The CLI's failures as README says: permission denied, a socket path to suggest, -v."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ctl import CAP, CliRun, Driven, kfence_cli

import kfence_py
from kfence_py.exitcodes import ExitCode

PACKAGE_ROOT = Path(kfence_py.__file__).resolve().parents[1]
NOBODY = 65534

# The CLI, its modules imported first, then run with the uid and gid of nobody: root's
# interpreter may sit in a directory nobody cannot enter (/root), so nobody cannot exec it.
AS_NOBODY = f"""
import os, sys
import kfence_py.cli
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
sys.exit(kfence_py.cli.main(sys.argv[1:]))
"""


def cli_as_another_user(*args: str, cwd: Path) -> CliRun:
    """kfence-py as a user other than the owner of this test's files and processes."""
    if os.geteuid() == 0:
        argv = [sys.executable, "-c", AS_NOBODY, *args]
    else:
        argv = [sys.executable, "-m", "kfence_py", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CAP, check=False,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)})
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def foreign_pid():
    """A running process whose memory maps the CLI of cli_as_another_user may not read."""
    if os.geteuid() != 0:
        if os.stat("/proc/1").st_uid == os.geteuid():
            pytest.skip("no process of another user to look at")
        yield 1
        return
    sleeper = subprocess.Popen(["sleep", "60"])  # root's, read by nobody
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def _one_plain_line(run: CliRun, code: ExitCode, text: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("kfence-py: ")
    assert text in run.stderr and "Traceback" not in run.stderr


def test_a_process_we_may_not_read_is_permission_denied_not_missing(foreign_pid, tmp_path):
    run = cli_as_another_user("reports", "--pid", str(foreign_pid), cwd=tmp_path)
    _one_plain_line(run, ExitCode.PERMISSION, f"pid {foreign_pid}: permission denied")
    assert "no process" not in run.stderr
    # The baseline: a pid that does not exist is still "no process".
    gone = subprocess.Popen(["true"])
    gone.wait()
    run = cli_as_another_user("reports", "--pid", str(gone.pid), cwd=tmp_path)
    _one_plain_line(run, ExitCode.NO_SERVER, f"no process {gone.pid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a file another user cannot read")
def test_a_state_file_we_may_not_read_is_permission_denied(start_target, short_dir):
    _, pid, state_dir = start_target()
    state_dir.chmod(0o755)  # nobody may list it, not read the 0600 file
    (state_dir / f"{pid}.state").chmod(0o600)
    short_dir.chmod(0o755)
    run = cli_as_another_user("stats", "--pid", str(pid), "--state-dir", str(state_dir),
                              cwd=Path("/"))
    _one_plain_line(run, ExitCode.PERMISSION, "Permission denied")
    state_dir.chmod(0o700)
    run = cli_as_another_user("stats", "--state-dir", str(state_dir), cwd=Path("/"))
    _one_plain_line(run, ExitCode.PERMISSION, "Permission denied")
    # The owner reads it.
    assert kfence_cli("stats", "--pid", str(pid), "--state-dir", str(state_dir),
                      cwd=short_dir).returncode == 0


def _serve_in_a_shared_directory(tmp_path: Path, env: dict[str, str]) -> CliRun:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    return kfence_cli("serve", "--state-dir", str(state_dir), "--socket", str(shared / "s"),
                      cwd=tmp_path, env=env)


def _without_xdg(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp_path)  # the temporary directory the suggestion is made in
    return env


def test_serve_suggests_a_real_path_when_xdg_runtime_dir_is_unset(short_dir):
    run = _serve_in_a_shared_directory(short_dir, _without_xdg(short_dir))
    _one_plain_line(run, ExitCode.RUN_FAILED, "must be private")
    assert "$" not in run.stderr, "nothing built from an unset variable"
    match = re.search(r"e\.g\. (\S+)$", run.stderr.strip())
    assert match, run.stderr
    suggested = Path(match.group(1))
    assert suggested == short_dir / f"kfence-{os.geteuid()}" / "stats.sock"
    # ... and it works: serve makes its directory there, 0700, and listens.
    state_dir = short_dir / "state"
    server = Driven([sys.executable, "-m", "kfence_py", "serve", "--state-dir", str(state_dir),
                     "--socket", str(suggested)], _without_xdg(short_dir), short_dir,
                    merge_stderr=True)
    try:
        assert server.readline() == f"kfence-py: serving {state_dir} on {suggested}"
        assert (suggested.parent.stat().st_mode & 0o777) == 0o700
        assert kfence_cli("stats", "--socket", str(suggested), cwd=short_dir).returncode == 0
    finally:
        server.proc.terminate()
        assert server.finish() == 0


def test_serve_suggests_xdg_runtime_dir_when_set(tmp_path):
    runtime = tmp_path / "runtime"
    run = _serve_in_a_shared_directory(tmp_path, {"XDG_RUNTIME_DIR": str(runtime)})
    _one_plain_line(run, ExitCode.RUN_FAILED, f"e.g. {runtime}/kfence/stats.sock")


def test_verbose_after_the_command_logs(start_target, short_dir):
    _, pid, state_dir = start_target()
    quiet = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir), "burst=2",
                       cwd=short_dir)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = kfence_cli("config", "--pid", str(pid), "--state-dir", str(state_dir), "burst=3",
                      "-v", cwd=short_dir)
    assert loud.returncode == 0, loud.stderr
    assert f"kfence-py: pid {pid}: burst=3" in loud.stderr
