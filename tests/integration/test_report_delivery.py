"""leak_check without process_vm_readv, reports the print lock loses, align below
malloc's (issue 9, items 9, 10b and 10c)."""

from __future__ import annotations

import pytest

GUARD = {"sample_rate": 1}
# Two threads with the same bug, each to be reported: not one bucket's repeat.
EACH = {**GUARD, "dedup_reports": 0}
LEAK = {**GUARD, "leak_check": 1}


@pytest.fixture(scope="module")
def leak_seccomp(programs):
    return programs.build("leak_seccomp.c")


@pytest.mark.parametrize("err", ["EPERM", "ENOSYS"])
def test_leak_check_reads_proc_self_mem_when_process_vm_readv_is_refused(programs, leak_seccomp,
                                                                          err):
    run = programs.run(leak_seccomp, "process_vm_readv", err, options=LEAK)
    assert "guarded 1 1" in run.stdout, run.stdout + run.stderr
    (report,) = run.reports
    assert report.kind == "memory leak" and report.size == 48, "the dropped object only"
    assert [f.function for f in report.alloc_stack[:2]] == ["alloc_buffer", "make_leak"]
    assert run.returncode == 66 and not run.warnings, run.stderr


@pytest.mark.parametrize("refused,why", [
    ("process_vm_readv,pread64", "process_vm_readv and /proc/self/mem refused"),
    ("openat", "cannot open /proc/self/maps"),
], ids=["memory", "maps"])
def test_leak_check_judges_nothing_when_it_cannot_scan(programs, leak_seccomp, refused, why):
    run = programs.run(leak_seccomp, refused, "EPERM", options=LEAK)
    assert "guarded 1 1" in run.stdout, run.stdout + run.stderr
    assert not run.reports, "no object is a leak after an incomplete scan"
    assert run.returncode == 0
    (warning,) = run.warnings
    assert "leak_check skipped" in warning and why in warning


def test_report_that_loses_the_lock_is_still_recorded_and_counted(programs):
    """
    stderr is a full pipe: the thread that takes the report lock blocks in
    write() for good, the other one's wait times out.  Its report must still
    be in the ring and in the bug count (the exit status), not lost.
    """
    run = programs.run(programs.build("stuck_stderr.c"), options=EACH, timeout=60)
    assert "guarded 1 1" in run.stdout, run.stdout
    assert "reports_written=2 kinds=1,1" in run.stdout, run.stdout
    assert run.counters()["bugs"] == 2
    assert run.returncode == 66


@pytest.mark.parametrize("options,warned", [
    ({"align": 1, "placement": "right"}, True),
    ({"align": 8, "placement": "random"}, True),
    ({"align": 1, "placement": "left"}, False),
    ({"align": 16, "placement": "right"}, False),
], ids=["1-right", "8-random", "1-left", "16-right"])
def test_align_below_malloc_alignment_warns_once(programs, options, warned):
    run = programs.run(programs.build("bugs.c"), options={**GUARD, **options})
    assert run.returncode == 0 and "done" in run.stdout
    if not warned:
        assert not run.warnings, run.stderr
        return
    (warning,) = run.warnings
    assert f"align={options['align']} with placement={options['placement']}" in warning
    assert "malloc's 16 bytes" in warning and "crash" in warning


def test_report_does_not_wait_for_the_loader_lock(programs):
    """
    Another thread holds the dynamic loader's lock (it is in dlopen(), in a
    constructor that waits until the first report is out): both reports
    are printed in full, since symbols are found without the loader
    (/proc/self/maps and the ELF files), not with dladdr().
    """
    lib = programs.build("slow_ctor.c", flags=["-shared", "-fPIC"])
    run = programs.run(programs.build("lock_fallback.c"), str(lib), options=EACH, timeout=60)
    assert "guarded 1 1" in run.stdout, run.stdout
    assert [(r.kind, r.function) for r in run.reports] == [("use-after-free", "use_after_free")] * 2
    assert not run.warnings, run.stderr
    assert run.counters()["bugs"] == 2
    assert run.returncode == 66
