"""Faults on a slot another thread is allocating or freeing at that moment (issue 9, 10a).

Every report must describe one object consistently: the address inside the
use-after-free object it names, which has a free stack, or beside the
out-of-bounds object it names, at the distance printed.
"""

from __future__ import annotations

import os

import pytest

PAGE = os.sysconf("SC_PAGESIZE")


def consistent(report) -> bool:
    if report.kind == "use-after-free":
        start, end = report.object_start, report.object_start + report.size
        return start <= report.address < end and bool(report.free_stack)
    if report.kind == "out-of-bounds":
        start, end = report.object_start, report.object_start + report.size
        if report.distance > 0:  # the guard page after the object's page
            return (report.address >= end and report.address - start == report.distance
                    and report.address // PAGE == start // PAGE + 1)
        return (report.address < start and start - report.address == -report.distance
                and report.address // PAGE == start // PAGE - 1)
    return report.kind == "invalid" and report.object_start is None


@pytest.mark.slow
def test_reports_stay_consistent_while_slots_are_reused(programs, reliability_prog):
    exe = reliability_prog("slotrace.c")
    run = programs.run(exe, "2", "300", options={"sample_rate": 1, "placement": "right",
                                                 "align": 1, "num_objects": 16}, timeout=120)
    assert run.returncode == 66 and "reads done" in run.stdout, run.stdout + run.stderr[-2000:]
    reports = run.reports
    assert any(r.kind == "use-after-free" for r in reports)
    bad = [r for r in reports if not consistent(r)]
    assert not bad, f"{len(bad)} of {len(reports)} reports contradict themselves:\n{bad[0].text}"
