"""``kfence-py run``: its state directory checked up front, and the exit status of
a command whose processes reported bugs but exited 0 on their own."""

from __future__ import annotations

import os
import shutil

import pytest
from ctl import PROGS, kfence_cli

from kfence_py.exitcodes import ExitCode

NOBODY = 65534


@pytest.fixture(scope="session")
def oob_exit(programs):
    return programs.build(PROGS / "oob_exit.c")


def _run(short_dir, *args: str):
    return kfence_cli("run", "--sample-rate", "1", "--placement", "right", *args,
                      cwd=short_dir)


# --- exit status -------------------------------------------------------------------


def test_a_bug_makes_the_exitcode_even_after_exit_0(short_dir, oob_exit):
    """exit_group(0) straight from the program: the library never sees the exit."""
    run = _run(short_dir, "--", str(oob_exit), "exit_group")
    assert "BUG: KFENCE: out-of-bounds write" in run.stderr
    assert run.returncode == 66, run.stderr
    assert "exited 0, but bugs were reported" in run.stderr


@pytest.mark.parametrize("how", ["_exit", "_Exit"])
def test_exits_through_libc_get_the_exitcode_from_the_library(short_dir, oob_exit, how):
    run = _run(short_dir, "--", str(oob_exit), how)
    assert run.returncode == 66, run.stderr
    assert "exited 0, but bugs were reported" not in run.stderr  # the process said 66


@pytest.mark.slow
def test_the_exitcode_option_is_the_status(short_dir, oob_exit):
    run = _run(short_dir, "--exitcode", "9", "--", str(oob_exit))
    assert run.returncode == 9, run.stderr
    from_env = kfence_cli("run", "--sample-rate", "1", "--placement", "right", "--",
                          str(oob_exit), cwd=short_dir, env={"KFENCE_OPTIONS": "exitcode=7"})
    assert from_env.returncode == 7, from_env.stderr
    off = _run(short_dir, "--exitcode", "0", "--", str(oob_exit))
    assert off.returncode == 0, off.stderr


def test_only_the_processes_of_this_run_count(short_dir, oob_exit):
    state_dir = short_dir / "kept"
    first = _run(short_dir, "--state-dir", str(state_dir), "--", str(oob_exit))
    assert first.returncode == 66
    # the buggy state of the first run stays in the directory: a clean run is still 0
    clean = _run(short_dir, "--state-dir", str(state_dir), "--", str(oob_exit), "clean")
    assert clean.returncode == 0, clean.stderr
    assert len(list(state_dir.glob("*.state"))) == 2


# --- the state directory ------------------------------------------------------------


def _one_line(run, code: ExitCode, text: str) -> None:
    assert run.returncode == code, run.stderr
    assert text in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_a_symlink_to_a_private_dir_is_refused_up_front(short_dir, target):
    real = short_dir / "real"
    real.mkdir(mode=0o700)
    link = short_dir / "link"
    link.symlink_to(real)
    run = kfence_cli("run", "--state-dir", str(link), "--", str(target), cwd=short_dir,
                     input="quit\n")
    _one_line(run, ExitCode.RUN_FAILED, f"{link} is a symbolic link (to {real})")
    assert "ready" not in run.stdout, "the command must not start"
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o701, 0o500])
def test_a_state_dir_not_0700_is_refused(short_dir, target, mode):
    state_dir = short_dir / "open"
    state_dir.mkdir()
    os.chmod(state_dir, mode)
    run = kfence_cli("run", "--state-dir", str(state_dir), "--", str(target), cwd=short_dir,
                     input="quit\n")
    _one_line(run, ExitCode.RUN_FAILED, "must be yours with mode 0700")
    assert f"it is {mode:04o} of uid {os.geteuid()}" in run.stderr
    assert "ready" not in run.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_state_dir_of_another_user_is_refused(short_dir, target):
    state_dir = short_dir / "theirs"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, NOBODY)
    run = kfence_cli("run", "--state-dir", str(state_dir), "--", str(target), cwd=short_dir,
                     input="quit\n")
    _one_line(run, ExitCode.RUN_FAILED, f"0700 of uid {NOBODY}")


def test_a_file_is_not_a_state_dir(short_dir, target):
    path = short_dir / "file"
    path.write_text("")
    run = kfence_cli("run", "--state-dir", str(path), "--", str(target), cwd=short_dir,
                     input="quit\n")
    _one_line(run, ExitCode.RUN_FAILED, f"{path} exists and is not a directory")


def test_a_new_state_dir_is_0700_whatever_the_umask(short_dir, oob_exit):
    state_dir = short_dir / "new"
    old = os.umask(0o277)
    try:
        run = _run(short_dir, "--state-dir", str(state_dir), "--", str(oob_exit), "clean")
    finally:
        os.umask(old)
    assert run.returncode == 0, run.stderr
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    shutil.rmtree(state_dir)
