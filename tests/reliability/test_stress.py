"""Threads, fork and exec under load: nothing crashes, hangs or is lost."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"sample_rate": 1, "num_objects": 4096}, None],
                         ids=["every-allocation", "default"])
def test_eight_threads_random_sizes(programs, reliability_prog, options):
    run = programs.run(reliability_prog("stress.c"), "8", "2.0", options=options, timeout=120)
    assert run.returncode == 0 and not run.reports, run.stderr
    counters = run.counters()
    assert counters["allocated"] == counters["allocs"] - counters["frees"]
    assert counters["allocs"] > (1000 if options else 50)
    assert int(run.stdout.split()[1]) > 10_000, "the threads made progress"


@pytest.mark.slow
def test_fork_vfork_spawn_and_exec_under_load(programs, reliability_prog):
    run = programs.run(reliability_prog("spawn.c"), "200",
                       options={"sample_rate": 1, "num_objects": 1024}, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "fork 200/200 vfork 10/10 spawn 10/10" in run.stdout
    assert not run.reports
