"""bench/ records where its figures come from and says which of them are noisy.

machine.py: the machine, kernel, glibc, Python and kfence_py commit of a run,
into pyperf metadata and back. noise.py and report.py: a cell's spread from
its raw values (ratios paired within rounds), and the noisy mark on cells
whose 95% interval is over ±10%.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pyperf
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402
import noise  # noqa: E402
import report  # noqa: E402

GIT = shutil.which("git")


def a_machine(**changes: object) -> machine.Machine:
    fields = dict(
        cpu_model="Test CPU 9000", cpus=64, usable_cpus=8, virtualized="no",
        kernel="Linux 9.9.9-test #1 SMP", glibc="glibc 2.99", python="3.99.0 (CPython) /x/py",
        kfence_py="/src/kfence_py", kfence_py_version="0.0.1", commit="ab" * 20, dirty="no",
        date="2030-01-02T03:04:05+00:00", load_avg="0.10 0.20 0.30",
    )
    fields.update(changes)
    return machine.Machine(**fields)  # type: ignore[arg-type]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True, capture_output=True, text=True).stdout.strip()


# === machine.py ===


@pytest.mark.skipif(GIT is None, reason="git not installed")
def test_snapshot_names_the_commit_of_the_measured_tree_and_whether_it_was_changed(tmp_path):
    package = tmp_path / "kfence_py"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "7.8.9"\n')
    lib = package / "libkfence.so"
    lib.write_text("not really a library\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")

    clean = machine.snapshot(lib)
    assert (clean.commit, clean.dirty) == (head, "no")
    assert clean.kfence_py == str(lib.resolve())
    assert clean.kfence_py_version == "7.8.9"

    (package / "__init__.py").write_text('__version__ = "7.8.10"\n')
    dirty = machine.snapshot(package)
    assert (dirty.commit, dirty.dirty) == (head, "yes")
    assert dirty.short_commit() == head[:12] + " (dirty)"


def test_snapshot_outside_a_checkout_says_the_commit_is_unknown(tmp_path):
    snap = machine.snapshot(tmp_path)
    assert (snap.commit, snap.dirty) == (machine.UNKNOWN, machine.UNKNOWN)
    assert snap.kfence_py_version == machine.UNKNOWN


def test_snapshot_describes_the_running_machine(tmp_path):
    snap = machine.snapshot(tmp_path)
    assert snap.cpus == os.cpu_count()
    assert snap.usable_cpus == len(os.sched_getaffinity(0))
    assert snap.cpu_model and snap.cpu_model != machine.UNKNOWN
    assert platform.release() in snap.kernel
    assert platform.libc_ver()[1] in snap.glibc
    assert snap.python.startswith(platform.python_version())
    taken = datetime.datetime.fromisoformat(snap.date)
    assert taken.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - taken).total_seconds() < 60
    assert len([float(x) for x in snap.load_avg.split()]) == 3


def test_cpu_model_is_read_from_cpuinfo_of_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\nHardware\t: BCM2835\n"
    assert machine.cpu_model(x86) == "AMD EPYC 7B13"
    assert machine.cpu_model(arm) == "BCM2835"
    assert machine.cpu_model("processor\t: 0\n") == ""
    assert machine.hypervisor("flags\t: fpu vme hypervisor lahf_lm\n") == "yes"
    assert machine.hypervisor("flags\t: fpu vme\n") == "no"


def test_metadata_values_are_ones_pyperf_accepts():
    odd = a_machine(kernel="Linux 6.1\n#1 SMP  PREEMPT", cpu_model="  ")
    meta = odd.metadata()
    assert meta[machine.PREFIX + "kernel"] == "Linux 6.1 #1 SMP PREEMPT"
    assert meta[machine.PREFIX + "cpu_model"] == machine.UNKNOWN
    assert meta[machine.PREFIX + "cpus"] == 64
    pyperf.Run([1.0], metadata={"name": "x", **meta}, collect_metadata=False)


def test_a_stamped_pyperf_file_gives_the_machine_back(tmp_path):
    path = tmp_path / "suite.json"
    benches = [pyperf.Benchmark([pyperf.Run([1.0, 1.1], metadata={"name": n, "loops": 1},
                                            collect_metadata=False)]) for n in ("a", "b")]
    pyperf.BenchmarkSuite(benches).dump(str(path))
    assert machine.from_metadata(pyperf.BenchmarkSuite.load(str(path)).get_metadata()) is None

    snap = a_machine()
    machine.stamp(path, snap)
    suite = pyperf.BenchmarkSuite.load(str(path))
    assert machine.from_metadata(suite.get_metadata()) == snap
    for bench in suite.get_benchmarks():
        assert machine.from_metadata(bench.get_metadata()) == snap
        assert bench.get_values() == (1.0, 1.1)
    assert machine.from_dict(json.loads(json.dumps(snap.as_dict()))) == snap


def test_header_names_machine_kernel_glibc_python_commit_and_date():
    text = "\n".join(machine.header(a_machine(dirty="yes")))
    for part in ("Test CPU 9000", "64 logical CPUs (8 usable)", "Linux 9.9.9-test",
                 "glibc 2.99", "3.99.0 (CPython)", "ab" * 20, "uncommitted changes: yes",
                 "2030-01-02T03:04:05+00:00", "0.10 0.20 0.30"):
        assert part in text
    other = a_machine(commit="cd" * 20)
    assert "cdcdcdcdcdcd" in "\n".join(machine.header(a_machine(), {"Python API": other}))
    assert "Python API" not in "\n".join(machine.header(a_machine(), {"Python API": a_machine()}))
    assert "not recorded" in machine.header(None)[0]


# === noise.py ===


def test_identical_values_have_no_spread_and_one_value_is_noisy():
    same = noise.median_estimate([2.0] * 5)
    assert (same.value, same.spread, same.noisy) == (2.0, 0.0, False)
    one = noise.median_estimate([2.0])
    assert one.noisy and one.pm() == "1 value"
    assert noise.ratio_estimate([2.0], [1.0, 1.0]).noisy


def test_the_interval_narrows_as_values_are_added():
    """The reason for more values per round: 5 values of a ±15% machine are noisy, 200 are not."""
    rng = random.Random(1)
    draws = [rng.gauss(1.0, 0.15) for _ in range(200)]
    few, many = noise.median_estimate(draws[:5]), noise.median_estimate(draws)
    assert few.noisy and not many.noisy
    assert many.spread < few.spread
    assert many.low < 1.0 < many.high


def test_ratio_of_medians_with_fixed_bases_and_a_seeded_interval():
    num, den = [3.0, 3.1, 2.9, 3.0, 3.0], [2.0, 2.0, 2.1, 1.9, 2.0]
    e = noise.ratio_estimate(num, den, num_base=1.0, den_base=1.0)
    assert e.value == pytest.approx((3.0 - 1.0) / (2.0 - 1.0))
    assert e.low <= e.value <= e.high
    assert noise.ratio_estimate(num, den, 1.0, 1.0) == e  # a regenerated summary is the same
    wide = noise.ratio_estimate([1.0, 2.0, 1.5, 3.0, 0.8], den)
    assert wide.noisy and not noise.ratio_estimate(num, den).noisy


def test_a_ratio_is_paired_only_between_values_of_the_same_rounds():
    base = {0: [1.0, 1.0], 1: [2.0, 2.0]}
    paired = noise.paired_ratio_estimate({0: [1.1, 1.1], 1: [2.2, 2.2]}, base)
    assert paired is not None and paired.value == pytest.approx(1.1) and not paired.noisy
    assert paired.paired and not noise.ratio_estimate([1.1, 1.1], [1.0, 1.0]).paired
    assert noise.paired_ratio_estimate({0: [1.1, 1.1]}, base) is None  # a round missing
    assert noise.paired_ratio_estimate({0: [1.1], 1: [2.2, 2.2]}, base) is None  # a value
    assert noise.paired_ratio_estimate({}, {}) is None


# === report.py ===


def write_results(directory: Path, rounds: dict[str, list[list[float]]],
                  snap: machine.Machine) -> None:
    """preflight.json and programs.json as run.py writes them: one pyperf run per round."""
    outcomes = {}
    for name in rounds:
        workload, mode = name.split("/")
        outcomes[name] = asdict(report.Outcome(workload, mode, "ok", 1.0, 1000, None))
    outcomes["w/duma"] = asdict(report.Outcome("w", "duma", "timeout (>2 s)", note="slow"))
    (directory / "preflight.json").write_text(json.dumps({"machine": snap.as_dict(),
                                                          "outcomes": outcomes}))
    benches = [pyperf.Benchmark([
        pyperf.Run(values, metadata={"name": n, "loops": 1, report.ROUND_KEY: rnd},
                   collect_metadata=False) for rnd, values in enumerate(runs)])
        for n, runs in rounds.items()]
    machine.stamp_benchmarks(benches, snap)
    pyperf.BenchmarkSuite(benches).dump(str(directory / "programs.json"))


def test_summary_marks_the_cells_whose_raw_values_spread_over_ten_percent(tmp_path):
    # The machine's load doubles between rounds: every value moves, ratios within a round do not.
    glibc = [[1.0, 1.01, 0.99], [2.0, 2.04, 1.96], [1.5, 1.5, 1.52]]
    write_results(tmp_path, {
        "w/glibc": glibc,
        "w/kfence-default": [[v * 1.1 for v in vs] for vs in glibc],
        "w/scudo": [[1.0, 2.0, 1.5], [3.0, 0.8, 2.5], [1.2, 2.2, 0.9]],
    }, a_machine(cpu_model="Measured Elsewhere CPU"))
    r = report.Results(tmp_path)
    text = report.summary(r, "python bench/run.py --quick", None)
    rows: dict[str, str] = {}  # the time table's, which comes first
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "1.10x ±0%" in rows["kfence-default"] and "noisy" not in rows["kfence-default"]
    assert "noisy" in rows["scudo"]
    assert "1.00x (median ±" in rows["glibc"] and "noisy" not in rows["glibc"]
    assert "timeout (>2 s)" in rows["duma"]
    assert "2 of 2 ratios are paired, 1 noisy" in text
    assert "(9 values per benchmark)" in text
    # The header comes from the JSON, not from the machine regenerating the summary.
    assert "Measured Elsewhere CPU" in text and machine.snapshot(tmp_path).cpu_model not in text


def test_python_table_gives_the_guarded_buffer_against_mmap_with_its_interval():
    steady = (20e-6, 20.2e-6, 19.8e-6, 20e-6, 20.1e-6, 19.9e-6)
    table = "\n".join(report.python_table({
        report.GUARDED: report.Timing.of(tuple(2 * v for v in steady)),
        report.MMAP: report.Timing.of(steady),
        "buffer/bytearray": report.Timing.of((1e-7,)),
    }))
    guarded = next(line for line in table.splitlines() if report.GUARDED in line)
    assert "2.000x mmap+close (95% CI 1." in guarded and "noisy" not in guarded
    single = next(line for line in table.splitlines() if "bytearray" in line)
    assert "1 value noisy" in single


def test_every_plan_takes_several_values_per_round():
    import py_bench
    import run

    def per_round(options: tuple[str, ...]) -> int:
        processes = int(options[options.index("-p") + 1]) if "-p" in options else 20
        return processes * int(options[options.index("-n") + 1])

    for plan in (run.QUICK, run.FULL):
        assert per_round(plan.pyperf_values) > 1 and per_round(plan.slow_values) > 1
    for py_plan in (py_bench.QUICK, py_bench.FULL):
        assert per_round(py_plan.pyperf) > 1


def test_micro_summary_does_not_compare_pool_sizes_when_noise_swallowed_a_cost():
    import micro_summary

    def row(n: int, median: float, base: float) -> micro_summary.Row:
        return micro_summary.Row(f"sampled/kfence-num_objects={n}", 10000, n, median, 0.1, base,
                                 (median,))

    rows = {r.name: r for r in (row(256, 0.17, 0.01), row(16384, 0.70, 0.71))}
    verdict = next(v for v in micro_summary.verdicts(rows) if "vs num_objects" in v)
    assert verdict.startswith("[n/a ]") and "too noisy" in verdict
    rows = {r.name: r for r in (row(256, 0.17, 0.01), row(16384, 0.90, 0.72))}
    verdict = next(v for v in micro_summary.verdicts(rows) if "vs num_objects" in v)
    assert verdict.startswith("[MISS]") and "max/min = 1.125x" in verdict


def test_a_target_is_judged_by_its_interval_and_a_noisy_straddle_is_undecided():
    e = noise.Estimate
    assert report.judged(e(0.9, 0.85, 0.95, 9), 1.0) == "**met**"
    assert report.judged(e(1.2, 1.1, 1.3, 9), 1.0) == "**missed**"
    assert report.judged(e(1.0, 0.6, 1.5, 9), 1.03) == "undecided (noisy)"
    assert report.judged(e(1.02, 0.99, 1.05, 9), 1.03) == "**met**"  # quiet: the figure decides
    assert report.judged(e(1.9, 1.85, 1.95, 9), 1.8, at_most=False) == "**met**"
    assert report.judged(e(1.0, 0.6, 1.2, 9), 1.8, at_most=False) == "**missed**"
    assert report.judged(e(1.0, math.nan, math.nan, 1), 1.8) == "undecided (noisy)"
    assert report.judged(None, 1.0) == "n/a"
