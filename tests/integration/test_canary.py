"""The canary check at free finds a write anywhere in the object's page outside
the object, as KFENCE's does: the check works 64 bytes at a time, so the
offsets below fall at the start, inside and at the end of such blocks and of
the page, on both sides of the object."""

from __future__ import annotations

import pytest

PAGE = 4096


@pytest.fixture(scope="module")
def canary(programs):
    return programs.build("canary.c")


def run_offsets(programs, canary, placement: str, size: int, offsets: list[int | None]):
    args = [str(size), *("-" if o is None else str(o) for o in offsets)]
    return programs.run(canary, *args, options={
        "sample_rate": 1, "num_objects": 1, "placement": placement, "dedup_reports": 0})


# Right-placed 13 bytes (align 16): the object is [4080, 4093), canary on both sides.
RIGHT_OFFSETS = [0, 1, 15, 16, 63, 64, 65, 1000, 2048, 4031, 4032, 4047, 4064, 4079,
                 4093, 4095]
# Left-placed 100 bytes: the object is [0, 100).
LEFT_OFFSETS = [100, 101, 111, 112, 127, 128, 2000, 4032, 4095]


@pytest.mark.parametrize(("placement", "size", "offsets"), [
    ("right", 13, RIGHT_OFFSETS),
    ("left", 100, LEFT_OFFSETS),
])
def test_a_write_anywhere_in_the_page_is_found_at_free(programs, canary, placement, size,
                                                         offsets):
    # A clean object between each corrupted one: the page's canary is whole again on reuse.
    plan = [x for off in offsets for x in (off, None)]
    run = run_offsets(programs, canary, placement, size, plan)
    assert run.returncode == 66, run.stderr
    assert "done" in run.stdout
    assert run.counters()["frees"] == len(plan)
    starts = {line.split("object=")[1] for line in run.stdout.splitlines() if "object=" in line}
    assert len(starts) == 1, "every object reused the one slot at the same place"
    reports = run.reports
    assert [r.kind for r in reports] == ["memory corruption"] * len(offsets), run.stderr
    object_start = reports[0].object_start
    page = object_start & ~(PAGE - 1)
    assert [r.address - page for r in reports] == offsets
    for r in reports:
        assert r.corrupted.split()[0] == "0x5a"
        assert r.free_stack[0].function == "main"
        assert r.alloc_stack[0].function == "alloc_object"


def test_objects_that_stay_inside_are_not_reported(programs, canary):
    """The baseline: the same cycles without a stray write report nothing."""
    run = run_offsets(programs, canary, "right", 13, [None] * 20)
    assert run.returncode == 0, run.stderr
    assert run.reports == []
    counters = run.counters()
    assert counters["allocs"] == counters["frees"] == 20, "every object was guarded"
