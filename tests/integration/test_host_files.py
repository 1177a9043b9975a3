"""Report files and path options a less privileged user could aim (issue 9, item 8)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import kfence_py
from kfence_py.options import format_options
from kfence_py.reports import parse_reports

GUARD = {"sample_rate": 1}
NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture(scope="module")
def told(programs):
    return programs.build("told.c")


def start(programs, exe, options) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "KFENCE_OPTIONS"}
    env.update(LD_PRELOAD=str(programs.lib), KFENCE_OPTIONS=format_options(options))
    return subprocess.Popen([str(exe)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Let the program go on; it must finish by itself (no hang on the planted name)."""
    try:
        out, err = proc.communicate("go\n", timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the program hung on its report file")
    return proc.returncode, out, err


def warnings(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("kfence:")]


def plant_symlink(name: Path, victim: Path) -> None:
    name.symlink_to(victim)


def plant_hardlink(name: Path, victim: Path) -> None:
    os.link(victim, name)


def plant_foreign_file(name: Path, victim: Path) -> None:
    name.write_text(victim.read_text())
    os.chown(name, NOBODY.pw_uid, NOBODY.pw_gid)
    name.chmod(0o666)


@pytest.mark.parametrize("plant,why", [
    (plant_symlink, "symbolic link"),
    (plant_hardlink, "hard links"),
    pytest.param(plant_foreign_file, "another user", marks=as_root),
], ids=["symlink", "hardlink", "foreign-file"])
def test_planted_report_file_is_refused(programs, told, tmp_path, plant, why):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "kfence.log"
    proc = start(programs, told, {**GUARD, "report_path": str(path)})
    name = tmp_path / f"kfence.log.{proc.pid}"
    plant(name, victim)
    before = name.read_bytes() if not name.is_symlink() else None
    code, out, err = finish(proc)
    assert code == 66 and "done" in out
    assert victim.read_text() == "precious\n", "the report was written through the planted name"
    if before is not None:
        assert name.read_bytes() == before
    assert [r.kind for r in parse_reports(err)] == ["use-after-free"], "reported on stderr"
    (warning,) = warnings(err)
    assert str(name) in warning and why in warning and "stderr" in warning


@pytest.mark.parametrize("reader", [False, True], ids=["no-reader", "reader"])
def test_fifo_report_file_neither_blocks_nor_takes_the_report(programs, told, tmp_path, reader):
    path = tmp_path / "kfence.log"
    proc = start(programs, told, {**GUARD, "report_path": str(path)})
    name = tmp_path / f"kfence.log.{proc.pid}"
    os.mkfifo(name, 0o666)
    # With a reader the open succeeds; the file type is what refuses it then.
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    try:
        code, out, err = finish(proc)
        if reader:
            # empty: EOF, or EAGAIN if no writer ever opened it
            with contextlib.suppress(BlockingIOError):
                assert os.read(fd, 4096) == b"", "the report went into the FIFO"
    finally:
        if fd >= 0:
            os.close(fd)
    assert code == 66 and "done" in out
    assert [r.kind for r in parse_reports(err)] == ["use-after-free"]
    (warning,) = warnings(err)
    assert str(name) in warning and "stderr" in warning


def test_report_file_is_created_0600_and_still_used(programs, told, tmp_path):
    path = tmp_path / "kfence.log"
    code, _, err = finish(start(programs, told, {**GUARD, "report_path": str(path)}))
    assert code == 66 and not parse_reports(err) and not warnings(err)
    (log,) = tmp_path.glob("kfence.log.*")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert [r.kind for r in parse_reports(log.read_text())] == ["use-after-free"]


SETUID_PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
int main(void) {
    printf("secure=%lu\n", getauxval(AT_SECURE));
    fflush(stdout);
    char *p = malloc(32); free(p); p[3] = 'x';
    return 0;
}
"""


@pytest.fixture
def world_dir():
    """A directory nobody can reach (pytest's tmp_path is root's alone), removed after."""
    path = Path(tempfile.mkdtemp(prefix="kfence-secure-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@as_root
def test_setuid_program_ignores_path_options_from_the_environment(world_dir):
    """
    A real AT_SECURE process: a program owned by nobody with the setuid bit,
    run by root (the real and effective uids differ).  The dynamic loader
    ignores LD_PRELOAD there, so the program is linked with the library (an
    absolute rpath is still honoured).  Nothing about the machine changes.
    """
    lib = world_dir / "libkfence.so"
    shutil.copy(kfence_py.lib_path(), lib)
    lib.chmod(0o755)
    source = world_dir / "secure.c"
    source.write_text(SETUID_PROG)
    exe = world_dir / "secure"
    subprocess.run(["gcc", "-g", str(source), "-o", str(exe),
                    f"-L{world_dir}", "-Wl,--no-as-needed", "-lkfence", f"-Wl,-rpath,{world_dir}"],
                   check=True)
    os.chown(exe, NOBODY.pw_uid, NOBODY.pw_gid)
    exe.chmod(0o4755)
    out_dir = world_dir / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)  # so that a report file could be written there, were it allowed
    options = {**GUARD, "report_path": str(out_dir / "kfence.log"),
               "state_dir": str(out_dir / "state")}
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["KFENCE_OPTIONS"] = format_options(options)
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    if "secure=0" in proc.stdout:
        pytest.skip(f"{world_dir.parent} is mounted nosuid: no AT_SECURE process here")
    assert "secure=1" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 66
    assert [r.kind for r in parse_reports(proc.stderr)] == ["use-after-free"]
    (warning,) = warnings(proc.stderr)
    assert "report_path and state_dir ignored" in warning and "AT_SECURE" in warning
    assert list(out_dir.iterdir()) == [], "nothing was created where the environment said"
