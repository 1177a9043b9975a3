#!/usr/bin/env python3
"""Summary table of a micro_bench.py run, read back from its pyperf JSON.

Every timed benchmark has a start-up twin (the same command with 0
iterations); the per-iteration cost is (median(N) - median(0)) / N, so process
creation, exec, dynamic loading and libkfence's own start-up are not spread
over the loop.  Ratios are taken between those net loop times.

    python bench/micro_summary.py [bench/results/micro.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pyperf

log = logging.getLogger("micro_summary")

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "micro.json"

# Benchmark names: "<group>/<mode>" for the loop, "startup/<group>/<mode>" for its twin.
STARTUP_PREFIX = "startup/"
GLIBC = "unsampled/glibc"
NOOP = "unsampled/noop-interposer"
KFENCE_DEFAULT = "unsampled/kfence-default"
SAMPLED_DEFAULT = "sampled/kfence-sample_rate=1"

# The targets, as stated for the project.
TARGET_UNSAMPLED_VS_NOOP = 1.03
TARGET_SAMPLED_US = 6.0
# "Does not grow with num_objects": the largest pool may cost at most this much
# more per call than the smallest before we call it growth.
TARGET_FLAT_SPREAD = 1.10


@dataclass
class Row:
    name: str
    iterations: int
    median_s: float
    rel_stdev: float
    startup_s: float

    @property
    def net_s(self) -> float:
        return self.median_s - self.startup_s

    @property
    def per_iter_s(self) -> float:
        return self.net_s / self.iterations


def load_rows(path: Path) -> dict[str, Row]:
    suite = pyperf.BenchmarkSuite.load(str(path))
    benches = {b.get_name(): b for b in suite.get_benchmarks()}
    rows: dict[str, Row] = {}
    for name, bench in benches.items():
        if name.startswith(STARTUP_PREFIX):
            continue
        twin = benches.get(STARTUP_PREFIX + name)
        if twin is None:
            log.warning("%s has no start-up twin; start-up not subtracted", name)
        iterations = int(bench.get_metadata().get("loop_iterations", 0))
        if iterations <= 0:
            log.warning("%s has no loop_iterations metadata; skipped", name)
            continue
        median = bench.median()
        rows[name] = Row(
            name=name,
            iterations=iterations,
            median_s=median,
            rel_stdev=bench.stdev() / median if bench.get_nvalue() > 1 else 0.0,
            startup_s=twin.median() if twin is not None else 0.0,
        )
    return rows


def _fmt_time(seconds: float) -> str:
    if abs(seconds) >= 1e-6:
        return f"{seconds * 1e6:8.3f} us"
    return f"{seconds * 1e9:8.2f} ns"


def _ratio(row: Row, base: Row | None) -> str:
    if base is None or base.net_s <= 0:
        return "     -"
    return f"{row.per_iter_s / base.per_iter_s:6.3f}"


def format_table(rows: dict[str, Row]) -> str:
    glibc, noop = rows.get(GLIBC), rows.get(NOOP)
    header = (
        f"{'benchmark':40} {'N':>9} {'median':>10} {'+-sd':>6} {'startup':>9} "
        f"{'per iter (net)':>14} {'x glibc':>7} {'x noop':>7}"
    )
    lines = [header, "-" * len(header)]
    for name, r in rows.items():  # in the order they were run
        unsampled = name.startswith("unsampled/")
        lines.append(
            f"{name:40} {r.iterations:9d} {r.median_s * 1e3:7.1f} ms {r.rel_stdev * 100:5.1f}% "
            f"{r.startup_s * 1e3:6.2f} ms {_fmt_time(r.per_iter_s):>14} "
            f"{_ratio(r, glibc if unsampled else None):>7} "
            f"{_ratio(r, noop if unsampled else None):>7}"
        )
    lines.append("")
    lines.append("median: pyperf median wall time of one run of the command; +-sd: stdev/median;")
    lines.append("startup: median of the same command with 0 iterations;")
    lines.append("per iter (net) = (median - startup) / N; ratios (unsampled rows only) are")
    lines.append("between net per-iteration costs.")
    return "\n".join(lines)


def verdicts(rows: dict[str, Row]) -> list[str]:
    out: list[str] = []
    kf, noop, glibc = rows.get(KFENCE_DEFAULT), rows.get(NOOP), rows.get(GLIBC)
    if kf and noop and glibc:
        ratio = kf.per_iter_s / noop.per_iter_s
        raw = kf.median_s / noop.median_s
        out.append(
            f"[{'MET ' if ratio <= TARGET_UNSAMPLED_VS_NOOP else 'MISS'}] unsampled kfence vs "
            f"do-nothing interposer: {ratio:.3f}x net ({raw:.3f}x raw wall time), target <= "
            f"{TARGET_UNSAMPLED_VS_NOOP:.2f}x; vs glibc {kf.per_iter_s / glibc.per_iter_s:.3f}x "
            f"(interposer alone {noop.per_iter_s / glibc.per_iter_s:.3f}x)"
        )
    sampled = rows.get(SAMPLED_DEFAULT)
    if sampled:
        us = sampled.per_iter_s * 1e6
        gross = sampled.median_s / sampled.iterations * 1e6
        out.append(
            f"[{'MET ' if us <= TARGET_SAMPLED_US else 'MISS'}] sampled malloc+free cycle "
            f"(sample_rate=1): {us:.2f} us net ({gross:.2f} us gross = median/N), "
            f"target <= {TARGET_SAMPLED_US:.1f} us"
        )
    for group in ("sampled", "unsampled"):
        prefix = f"{group}/kfence-num_objects="
        scaled = sorted(
            (r for n, r in rows.items() if n.startswith(prefix)),
            key=lambda r: int(r.name[len(prefix):]),
        )
        if len(scaled) < 2:
            continue
        small, large = scaled[0], scaled[-1]
        spread = large.per_iter_s / small.per_iter_s
        series = ", ".join(
            f"{r.name.rsplit('num_objects=', 1)[1]}: {_fmt_time(r.per_iter_s).strip()}"
            for r in scaled
        )
        out.append(
            f"[{'MET ' if spread <= TARGET_FLAT_SPREAD else 'MISS'}] {group} cost vs num_objects "
            f"({series}): largest/smallest = {spread:.3f}x, target <= {TARGET_FLAT_SPREAD:.2f}x"
        )
    return out


def summarize(path: Path) -> str:
    rows = load_rows(path)
    return format_table(rows) + "\n\n" + "\n".join(verdicts(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.json.exists():
        log.error("%s does not exist; run bench/micro_bench.py first", args.json)
        return 1
    print(summarize(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
