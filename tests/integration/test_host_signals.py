"""The program's own SIGSEGV handling survives the preload (issue 9, "Never harm the host").

Chained handlers get their flags and mask as the kernel would give them, the
recorded handler is read race-free, and SIGSEGV/SIGBUS blocked by the program
neither hide a pool bug nor change what a wild fault does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import kfence_py

RIGHT = {"sample_rate": 1, "placement": "right"}


@pytest.fixture(scope="module")
def hostsig(programs):
    return programs.build("hostsig.c")


def test_nodefer_handler_leaving_with_longjmp_catches_every_fault(programs, hostsig):
    run = programs.run(hostsig, "nodefer", options=RIGHT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "recovered 5" in run.stdout
    assert not run.reports


def test_handler_mask_is_applied_and_restored(programs, hostsig):
    run = programs.run(hostsig, "samask", options=RIGHT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("in handler: usr1=1 segv=1") == 2, run.stdout
    assert "after: usr1=0 segv=0" in run.stdout
    assert "recovered 2" in run.stdout


def test_fortified_siglongjmp_restores_the_mask_too(programs):
    # _FORTIFY_SOURCE turns siglongjmp() into __longjmp_chk()
    exe = programs.build("hostsig.c", flags=["-O2", "-D_FORTIFY_SOURCE=2"])
    run = programs.run(exe, "samask", options=RIGHT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("in handler: usr1=1 segv=1") == 2, run.stdout
    assert "after: usr1=0 segv=0" in run.stdout
    assert "recovered 2" in run.stdout


def test_resethand_second_fault_takes_the_default_action(programs, hostsig):
    run = programs.run(hostsig, "resethand", options=RIGHT)
    assert run.returncode == -signal.SIGSEGV, run.stdout + run.stderr
    assert "recovered 1, handler now SIG_DFL" in run.stdout
    assert "second fault survived" not in run.stdout


def test_handler_left_without_restoring_the_mask_keeps_sigsegv_blocked(programs, hostsig):
    run = programs.run(hostsig, "keep", options=RIGHT)
    assert run.returncode == -signal.SIGSEGV, run.stdout + run.stderr
    assert "recovered 1, segv blocked=1" in run.stdout
    assert "second fault survived" not in run.stdout


def test_fault_inside_a_deferring_handler_takes_the_default_action(programs, hostsig):
    run = programs.run(hostsig, "nested", options=RIGHT)
    assert run.returncode == -signal.SIGSEGV, run.stdout + run.stderr
    assert run.stdout.count("in handler") == 1
    assert "nested fault came back" not in run.stdout


def test_handler_reinstalled_in_a_loop_while_faulting(programs, hostsig):
    run = programs.run(hostsig, "race", "50000", options=RIGHT)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("faults "))
    counts = dict(kv.split("=") for kv in line.split()[2:])
    assert int(counts["a"]) + int(counts["b"]) == 50000, line
    assert counts["bad"] == "0", f"a handler saw another's flags or mask: {line}"


def test_pool_bug_in_a_worker_started_with_every_signal_blocked(programs, hostsig):
    run = programs.run(hostsig, "blocked-pool", options=RIGHT)
    assert run.returncode == 66, run.stdout + run.stderr
    (report,) = run.reports
    assert (report.kind, report.access) == ("out-of-bounds", "write")
    assert report.function == "overflow_in_worker"
    assert "worker sees SIGSEGV blocked: yes" in run.stdout
    assert "main sees SIGSEGV blocked: yes" in run.stdout
    assert "survived" in run.stdout
    assert "app handler" not in run.stdout


def test_wild_fault_while_blocked_kills_without_calling_the_handler(programs, hostsig):
    run = programs.run(hostsig, "blocked-wild", options=RIGHT)
    assert run.returncode == -signal.SIGSEGV, run.stdout + run.stderr
    assert not run.reports
    assert "app handler" not in run.stdout
    assert "survived" not in run.stdout


def test_sent_sigsegv_waits_while_blocked(programs, hostsig):
    run = programs.run(hostsig, "blocked-raise", options=RIGHT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "while blocked: handled 0" in run.stdout
    assert "after unblock: handled 1" in run.stdout


def test_mask_set_and_old_set_may_be_one(programs, hostsig):
    run = programs.run(hostsig, "alias", options=RIGHT)
    assert "old had segv=0, now segv=1" in run.stdout, run.stdout + run.stderr


def test_pool_bug_after_sigblock(programs, hostsig):
    run = programs.run(hostsig, "sigblock", options=RIGHT)
    assert run.returncode == 66, run.stdout + run.stderr
    (report,) = run.reports
    assert (report.kind, report.function) == ("use-after-free", "use_after_free")
    assert "survived, segv blocked=1" in run.stdout


def test_pool_bug_in_a_handler_that_blocks_every_signal(programs, hostsig):
    run = programs.run(hostsig, "in-usr1", options=RIGHT)
    assert run.returncode == 66, run.stdout + run.stderr
    (report,) = run.reports
    assert (report.kind, report.function) == ("use-after-free", "use_after_free")
    assert "usr1 handler survived" in run.stdout and "survived" in run.stdout


# --- found by a second hostile review -----------------------------------------------

@pytest.fixture(scope="module")
def sigvfork(programs):
    return programs.build("sigvfork.c")


@pytest.mark.parametrize("what", ["vfork-sig", "vfork-mask"])
def test_vfork_child_signal_calls_stay_its_own(programs, sigvfork, what):
    """A vfork child shares our records with its parent, not its kernel signal state."""
    run = programs.run(sigvfork, what)
    assert run.returncode == 0, run.stdout + run.stderr  # was SIGSEGV: the handler was lost
    assert "parent blocks SIGSEGV: 0" in run.stdout
    assert "parent's handler ran" in run.stdout


@pytest.mark.parametrize("what", ["sighold", "sigignore", "sigsuspend"])
def test_other_ways_of_blocking_sigsegv_keep_pool_bugs_reported(programs, sigvfork, what):
    run = programs.run(sigvfork, what, options="sample_rate=1:placement=right")
    assert run.returncode == 66, run.stdout + run.stderr  # was a silent SIGSEGV
    assert "done" in run.stdout
    kinds = {(r.kind, r.access, r.function) for r in run.reports}
    assert kinds == {("out-of-bounds", "read", "off_by_one_reads")}


def test_faulthandler_still_reports_after_a_subprocess(tmp_path):
    """CPython's subprocess vforks and resets SIGSEGV in the child before exec."""
    script = tmp_path / "crash.py"
    script.write_text("import ctypes, faulthandler, subprocess\n"
                      "faulthandler.enable()\n"
                      "subprocess.run(['true'])\n"
                      "ctypes.string_at(0)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env["LD_PRELOAD"] = str(kfence_py.lib_path())
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in proc.stderr  # was silent
