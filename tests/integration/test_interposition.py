"""Every interposed entry point keeps glibc's semantics, and reaches the pool."""

from __future__ import annotations

import pytest

EVERY = {"sample_rate": 1, "num_objects": 64}


@pytest.fixture(scope="module")
def api(programs):
    return programs.build("api.c")


def test_semantics_match_glibc(programs, api):
    plain = programs.run(api, "semantics", preload=False)
    guarded = programs.run(api, "semantics", options=EVERY)
    assert plain.returncode == guarded.returncode == 0, guarded.stderr
    assert guarded.stdout == plain.stdout
    assert not guarded.reports and not guarded.warnings, guarded.stderr
    # glibc's answers themselves, so a broken baseline cannot hide a broken preload
    assert "malloc(SIZE_MAX) null=1 errno=12" in plain.stdout
    assert "calloc overflow null=1 errno=12" in plain.stdout
    assert "free keeps errno=1234" in plain.stdout
    assert "posix_memalign(3) rc=22 untouched=1" in plain.stdout
    assert "realloc chain kept=1" in plain.stdout


def test_default_options_semantics_match_glibc(programs, api):
    plain = programs.run(api, "semantics", preload=False)
    default = programs.run(api, "semantics")
    assert default.stdout == plain.stdout and default.returncode == 0


def test_guarded_objects(programs, api):
    run = programs.run(api, "guarded", options=EVERY)
    assert run.returncode == 0 and "guarded checks passed" in run.stdout, run.stdout + run.stderr
    assert not run.reports


def test_calloc_of_reused_slot_is_zeroed(programs, api):
    run = programs.run(api, "calloc_reuse", options={"sample_rate": 1, "num_objects": 1})
    assert "calloc reuse same_slot=1 guarded=1 zeroed=1" in run.stdout, run.stdout + run.stderr


def test_cxx_new_and_delete(programs):
    exe = programs.build("cxx.cpp", cxx=True)
    run = programs.run(exe, options=EVERY)
    assert run.returncode == 0 and "c++ checks passed" in run.stdout, run.stdout + run.stderr
    counters = run.counters()
    assert counters["allocs"] >= 4 and not run.reports


def test_non_pie_program_that_takes_malloc_address(programs, tmp_path):
    """In a non-PIE executable &malloc is its own PLT entry: still preloaded, still sampled."""
    source = tmp_path / "nopie.c"
    source.write_text("""
#include "kftest.h"
void *(*volatile alloc_fn)(size_t) = malloc;
int main(void) {
    char *p = alloc_fn(64);
    printf("guarded=%d\\n", kf_test_guarded(p));
    free(p);
    return 0;
}
""")
    run = programs.run(programs.build(source, flags=("-no-pie", "-fno-pie")), options=EVERY)
    assert "guarded=1" in run.stdout, run.stdout + run.stderr
