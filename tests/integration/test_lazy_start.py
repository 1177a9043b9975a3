"""Start-up does only what must come before the first guarded object: libgcc_s's
unwinder, whose loading was most of the preload's start-up cost, waits for the
first stack, and is never loaded from inside the dynamic loader."""

from __future__ import annotations

import pytest

GUARD = {"sample_rate": 1}


@pytest.fixture(scope="module")
def lazy(programs):
    return programs.build("lazy.c")


def fields(run) -> dict[str, int]:
    assert run.returncode == 0, run.stderr
    return {k: int(v) for k, v in (kv.split("=") for kv in run.stdout.split())}


def test_the_unwinder_is_loaded_at_the_first_guarded_object(programs, lazy):
    got = fields(programs.run(lazy, "first", options=GUARD))
    assert got == {"before": 0, "guarded": 1, "after": 1}


def test_without_the_preload_the_program_never_loads_the_unwinder(programs, lazy):
    """The baseline: a plain C program has no libgcc_s of its own to find."""
    got = fields(programs.run(lazy, "first", preload=False))
    assert got == {"before": 0, "guarded": 0, "after": 0}


def test_allocations_of_the_loader_inside_dlopen_do_not_load_it(programs, lazy):
    # libm is not linked in: its dlopen makes the loader allocate (link maps, scopes).
    got = fields(programs.run(lazy, "dlopen", "libm.so.6", options=GUARD))
    assert got["loaded"] == 1
    assert got["objects"] == 0 and got["gcc"] == 0, "the loader's allocations were not sampled"
    assert got["objects_after"] == 1 and got["gcc_after"] == 1, "the program's own one was"
