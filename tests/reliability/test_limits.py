"""Limits of the system: mappings refused, address space full, kernel accesses."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")


def test_kernel_access_to_freed_memory_is_efault(programs, reliability_prog):
    run = programs.run(reliability_prog("limits.c"), "efault", options={"sample_rate": 1})
    assert run.returncode == 0 and not run.reports, run.stderr
    assert "guarded=1 write=-1 errno=EFAULT" in run.stdout


def test_no_address_space_for_the_pool(programs, reliability_prog):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (128 << 20, 128 << 20))

    import subprocess
    exe = reliability_prog("limits.c")
    env = {"LD_PRELOAD": str(programs.lib), "KFENCE_OPTIONS": "num_objects=65536"}
    proc = subprocess.run([str(exe), "many"], env=env, preexec_fn=limit, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "sum " in proc.stdout and "counters: none" in proc.stdout
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("kfence:")]
    assert any("cannot map the pool" in w for w in warnings), proc.stderr


@pytest.fixture
def low_max_map_count():
    try:
        old = MAX_MAP_COUNT.read_text()
        MAX_MAP_COUNT.write_text("200\n")
    except OSError:
        pytest.skip("vm.max_map_count is not writable here")
    try:
        yield
    finally:
        MAX_MAP_COUNT.write_text(old)


@pytest.mark.machine("writes the system-wide vm.max_map_count (put back after the test)")
def test_mappings_refused_fall_back_to_glibc(programs, reliability_prog, low_max_map_count):
    # 200 maps: the pool is capped to 49 slots, and the program's own 120 maps
    # (plus its libraries') leave too few for all of them to be split out.
    run = programs.run(reliability_prog("limits.c"), "hold", "120", options={"sample_rate": 1})
    assert run.returncode == 0 and not run.reports, run.stderr
    fields = dict(kv.split("=") for kv in run.stdout.split())
    assert fields["intact"] == "1"
    assert 0 < int(fields["guarded"]) < 300, "some objects guarded, the rest from glibc"
    assert int(fields["map_failed"]) > 0
    assert sum("mprotect of a pool page failed" in x for x in run.warnings) == 1, "warned once"
    assert any("num_objects capped" in x for x in run.warnings)
