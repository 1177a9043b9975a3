"""Signals: our handler coexists with the program's, Python's faulthandler, alt stacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import kfence_py


def test_our_handler_is_sa_onstack(programs, reliability_prog):
    run = programs.run(reliability_prog("altstack.c"), "flags")
    assert "onstack=1 siginfo=1" in run.stdout, run.stdout + run.stderr


def test_stack_overflow_reaches_the_program_on_its_alternate_stack(programs, reliability_prog):
    run = programs.run(reliability_prog("altstack.c"), "overflow", options={"sample_rate": 1})
    assert run.returncode == 7, run.stdout + run.stderr
    assert "overflow caught on the alternate stack" in run.stdout


def test_wild_fault_still_dumps_core(programs, reliability_prog, tmp_path):
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    exe = reliability_prog("altstack.c")
    env = {**os.environ, "LD_PRELOAD": str(programs.lib), "KFENCE_OPTIONS": "sample_rate=1"}

    def allow_core() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    proc = subprocess.Popen([str(exe), "wild"], env=env, cwd=tmp_path, preexec_fn=allow_core,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status = os.waitpid(proc.pid, 0)
    proc.stderr.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} hands cores elsewhere; the SIGSEGV was checked")
    assert os.WCOREDUMP(status), "the default action of SIGSEGV, core dump included"


FAULTHANDLER_UAF = """
import kfence_py, kfbugs
kfence_py.enable(python_allocator=True, sample_rate=1)
print("size", kfbugs.use_after_decref(), flush=True)
"""


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "in-process"])
def test_python_faulthandler_does_not_hide_our_report(native_dir, tmp_path, preload):
    script = tmp_path / "uaf.py"
    script.write_text(FAULTHANDLER_UAF)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(native_dir),
                                                      env.get("PYTHONPATH", "")]))
    if preload:
        env["LD_PRELOAD"] = str(kfence_py.lib_path())
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "BUG: KFENCE: use-after-free read in use_after_decref" in proc.stderr, proc.stderr
    assert "Fatal Python error" not in proc.stderr
    assert proc.returncode == 66 and "size" in proc.stdout


def test_python_faulthandler_still_sees_other_crashes(native_dir, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import ctypes, kfence_py\nkfence_py.enable()\nctypes.string_at(16)\n")
    env = {**os.environ, "LD_PRELOAD": str(kfence_py.lib_path())}
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in proc.stderr
    assert "BUG: KFENCE" not in proc.stderr
