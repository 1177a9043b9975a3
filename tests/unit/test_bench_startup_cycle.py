"""bench/startup_bench.py and bench/cycle_bench.py measure what their names say:
every mode of the start-up runs and is paired with glibc's run of the same
round, and the cycle's loop is a loop of guarded objects (it stops if not)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kfence_py

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import cycle_bench  # noqa: E402
import startup_bench  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


def test_startup_runs_every_mode_paired_with_glibc(tmp_path):
    out = tmp_path / "startup.json"
    summary = startup_bench.run(kfence_py.lib_path(), tmp_path, startup_bench.MIN_ROUNDS, out)
    raw = json.loads(out.read_text())
    assert set(raw["modes"]) == {"glibc", "noop-interposer", "kfence-disabled", "kfence-default"}
    for mode in raw["modes"].values():
        assert len(mode["wall_us"]) == len(mode["cpu_us"]) == startup_bench.MIN_ROUNDS
        assert min(mode["wall_us"]) > 0 and min(mode["cpu_us"]) > 0
    assert raw["modes"]["kfence-default"]["ld_preload"] == str(kfence_py.lib_path())
    assert raw["modes"]["kfence-disabled"]["kfence_options"] == "enabled=0"
    assert "start-up added by the preload (kfence-default - glibc, wall)" in summary


def test_startup_refuses_fewer_rounds_than_the_bar_asks(tmp_path):
    with pytest.raises(SystemExit, match="at least 30"):
        startup_bench.run(kfence_py.lib_path(), tmp_path, 29, None)


def test_the_paired_difference_is_taken_round_by_round():
    assert startup_bench.paired([5.0, 7.0, 9.0], [1.0, 6.0, 2.0]) == [4.0, 1.0, 7.0]


@pytest.mark.slow
def test_cycle_loop_and_steps_report_each_size_and_step(tmp_path):
    out = tmp_path / "cycle.json"
    summary = cycle_bench.run(kfence_py.lib_path(), tmp_path, 1, 200, 200, [255, 256, 512], out)
    raw = json.loads(out.read_text())
    assert set(raw["loop"]) == {"255", "256", "512"}
    assert all(len(r["cpu_ns"]) == 3 for r in raw["loop"].values())
    steps = set(raw["steps"]["256"])
    assert {"mprotect-rw", "mprotect-none", "canary-fill", "canary-check", "stack-alloc",
            "stack-free", "madvise-free (removed)"} <= steps
    assert "sampled cycle at 255 slots" in summary
    assert "cycle vs num_objects" in summary


def test_cycle_loop_stops_when_nothing_is_guarded(tmp_path):
    """A library that does not sample (here: none at all) is refused, not timed."""
    exe = cycle_bench.build(tmp_path)
    not_kfence = tmp_path / "libnot.so"
    shutil.copy(BENCH / "micro" / "true.c", tmp_path / "empty.c")
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "empty.c"), "-o", str(not_kfence)],
                   check=True)
    with pytest.raises(SystemExit, match="not sampling"):
        cycle_bench.run_loop(exe, not_kfence, 16, 10, 1)
