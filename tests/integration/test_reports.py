"""Each kind of bug, caught and reported in KFENCE's format (KFENCE's own test list)."""

from __future__ import annotations

import pytest

GUARD = {"sample_rate": 1, "placement": "right"}
LEFT = {"sample_rate": 1, "placement": "left"}


@pytest.fixture(scope="module")
def bugs(programs):
    return programs.build("bugs.c")


def only_report(run, *, exitcode=66):
    assert run.returncode == exitcode, run.stderr
    assert "done" in run.stdout, "the program must go on after a recovered bug"
    assert len(run.reports) == 1, run.stderr
    return run.reports[0]


@pytest.mark.parametrize(("case", "options", "access", "distance"), [
    # KFENCE's numbers: right of an object counts from its start (p[32] of 32 bytes)
    ("oob_read_right", GUARD, "read", 32),
    ("oob_write_right", GUARD, "write", 32),
    ("oob_read_left", LEFT, "read", -1),
    ("oob_write_left", LEFT, "write", -3),
])
def test_out_of_bounds(programs, bugs, case, options, access, distance):
    report = only_report(programs.run(bugs, case, options=options))
    assert report.kind == "out-of-bounds"
    assert report.access == access
    assert report.function == case
    assert report.distance == distance
    assert report.size == 32 and report.cache == "malloc"
    assert report.stack[0].function == case
    assert report.alloc_stack[0].function == "alloc_buffer"
    assert report.alloc_stack[1].function == case
    assert not report.free_stack, "a live object has no free stack"
    side = "right" if distance > 0 else "left"
    assert f"({abs(distance)}B {side} of kfence-#{report.object_index})" in report.text


@pytest.mark.parametrize(("case", "access"), [("uaf_read", "read"), ("uaf_write", "write")])
def test_use_after_free(programs, bugs, case, access):
    report = only_report(programs.run(bugs, case, options=GUARD))
    assert (report.kind, report.access, report.function) == ("use-after-free", access, case)
    assert report.address == report.object_start + 5
    assert report.alloc_stack[1].function == case
    assert report.free_stack[0].function == case
    assert report.alloc_thread == report.free_thread


def test_double_free(programs, bugs):
    report = only_report(programs.run(bugs, "double_free", options=GUARD))
    assert (report.kind, report.access, report.function) == ("invalid free", None, "double_free")
    assert report.address == report.object_start
    assert report.free_stack[0].function == "double_free", "the first free is shown"


def test_invalid_address_free(programs, bugs):
    run = programs.run(bugs, "invalid_free", options=GUARD)
    report = only_report(run)
    assert (report.kind, report.function) == ("invalid free", "invalid_free")
    assert report.address == report.object_start + 1
    assert run.counters()["frees"] == 1, "the real free afterwards still works"


def test_corruption_found_at_free(programs, bugs):
    report = only_report(programs.run(bugs, "corruption", options=GUARD))
    assert (report.kind, report.function) == ("memory corruption", "corruption")
    assert report.address == report.object_start + 13
    assert report.corrupted.split()[0] == "0x42"
    assert set(report.corrupted.split()[1:]) == {"."}
    assert report.free_stack[0].function == "corruption"


def test_aligned_out_of_bounds_73_bytes(programs, bugs):
    """Alignment leaves 7 bytes of canary: reads there are not faults, the guard is."""
    report = only_report(programs.run(bugs, "aligned_oob", options=GUARD))
    assert (report.kind, report.access, report.function) == ("out-of-bounds", "read",
                                                             "aligned_oob")
    assert report.size == 73 and report.distance == 80


def test_align_1_puts_the_object_against_the_guard(programs, bugs):
    run = programs.run(bugs, "corruption", options={**GUARD, "align": 1})
    report = only_report(run)
    assert (report.kind, report.access, report.distance) == ("out-of-bounds", "write", 13)


def test_realloc_of_freed_pointer(programs, bugs):
    run = programs.run(bugs, "realloc_freed", options=GUARD)
    report = only_report(run)
    assert (report.kind, report.function) == ("invalid free", "realloc_freed")
    assert "returned NULL" in run.stdout


def test_invalid_access(programs, bugs):
    report = only_report(programs.run(bugs, "invalid_access", options=GUARD))
    assert (report.kind, report.access, report.function) == ("invalid", "read", "invalid_access")
    assert report.object_index is None


def test_one_report_per_object_and_kind(programs, bugs):
    run = programs.run(bugs, "uaf_read", "double_free", "uaf_write", options=GUARD)
    kinds = sorted((r.kind, r.function) for r in run.reports)
    assert kinds == [("invalid free", "double_free"), ("use-after-free", "uaf_read"),
                     ("use-after-free", "uaf_write")]


def test_many_frees_report_nothing(programs, bugs):
    run = programs.run(bugs, "many_frees", options={"sample_rate": 1, "num_objects": 16})
    assert run.returncode == 0 and not run.reports, run.stderr
    counters = run.counters()
    assert counters["allocs"] >= 2000
    # stdio's own buffer is the one object still live
    assert counters["allocated"] == counters["allocs"] - counters["frees"] == 1


def test_leak_check(programs, bugs):
    run = programs.run(bugs, "leak", options={**GUARD, "leak_check": 1})
    report = only_report(run)
    assert report.kind == "memory leak"
    assert report.size == 48
    assert report.function == "alloc_buffer"
    assert [f.function for f in report.alloc_stack[:2]] == ["alloc_buffer", "make_leak"]


def test_no_leak_check_by_default(programs, bugs):
    run = programs.run(bugs, "leak", options=GUARD)
    assert run.returncode == 0 and not run.reports


def test_halt_on_error_aborts_after_the_report(programs, bugs):
    run = programs.run(bugs, "uaf_write", options={**GUARD, "halt_on_error": 1})
    assert run.returncode == -6, "abort(): SIGABRT, with a core dump"
    assert "done" not in run.stdout
    assert [r.kind for r in run.reports] == ["use-after-free"]


def test_exitcode_and_report_path(programs, bugs, tmp_path):
    path = tmp_path / "kfence.log"
    run = programs.run(bugs, "uaf_read", options={**GUARD, "exitcode": 42,
                                                 "report_path": str(path)})
    assert run.returncode == 42
    assert not run.reports, "the report went to the file, not stderr"
    (log,) = tmp_path.glob("kfence.log.*")
    from kfence_py.reports import parse_reports
    assert [r.kind for r in parse_reports(log.read_text())] == ["use-after-free"]


def test_report_frames_name_modules_and_offsets(programs, bugs):
    report = only_report(programs.run(bugs, "oob_write_right", options=GUARD))
    frame = report.stack[0]
    assert frame.module == str(bugs)
    assert frame.symbol.startswith("oob_write_right+0x")
    assert 0 < frame.module_offset < bugs.stat().st_size
    assert "libkfence" not in report.text, "the library's own frames are left out"
