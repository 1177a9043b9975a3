#!/usr/bin/env python3
"""Summary table of a micro_bench.py run, read back from its pyperf JSON.

Every timed benchmark (N0 + N iterations) has a base twin: the same command
with N0 iterations only.  The per-iteration cost is (median(N0 + N) -
median(N0)) / N, so process creation, exec, dynamic loading, libkfence's own
start-up and (sampled modes, N0 = num_objects) the first-use page fault of each
pool slot are not spread over the loop: it is the steady-state cost.  Ratios
are taken between those net per-iteration costs.

    python bench/micro_summary.py [bench/results/micro.json] > summary.md
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import machine
import noise
import pyperf

log = logging.getLogger("micro_summary")

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "micro.json"

# Benchmark names: "<group>/<mode>" for the loop, "base/<group>/<mode>" for its twin.
BASE_PREFIX = "base/"
GLIBC = "unsampled/glibc"
NOOP = "unsampled/noop-interposer"
KFENCE_DEFAULT = "unsampled/kfence-default"
SAMPLED_DEFAULT = "sampled/kfence-sample_rate=1"

# The targets, as stated for the project.
TARGET_UNSAMPLED_VS_NOOP = 1.03
TARGET_SAMPLED_US = 6.0
# "Does not grow with num_objects": the dearest pool size may cost at most this
# much more per call than the cheapest before we call it growth (our threshold).
TARGET_FLAT_SPREAD = 1.10


@dataclass
class Row:
    name: str
    iterations: int  # net: the loop's count minus its base twin's
    base_iterations: int
    median_s: float
    rel_stdev: float
    base_s: float
    values: tuple[float, ...]

    @property
    def median_spread(self) -> float:
        """Relative half-width of the median's 95% bootstrap interval (noise.py)."""
        return noise.median_estimate(self.values).spread

    @property
    def net_s(self) -> float:
        return self.median_s - self.base_s

    @property
    def per_iter_s(self) -> float:
        return self.net_s / self.iterations


def load_rows(path: Path) -> dict[str, Row]:
    suite = pyperf.BenchmarkSuite.load(str(path))
    benches = {b.get_name(): b for b in suite.get_benchmarks()}
    rows: dict[str, Row] = {}
    for name, bench in benches.items():
        if name.startswith(BASE_PREFIX):
            continue
        twin = benches.get(BASE_PREFIX + name)
        if twin is None:
            log.warning("%s has no base twin; start-up not subtracted", name)
        total = int(bench.get_metadata().get("loop_iterations", 0))
        base = int(twin.get_metadata().get("loop_iterations", 0)) if twin is not None else 0
        iterations = total - base
        if iterations <= 0:
            log.warning("%s: no loop_iterations metadata beyond its base; skipped", name)
            continue
        median = bench.median()
        rows[name] = Row(
            name=name,
            iterations=iterations,
            base_iterations=base,
            median_s=median,
            rel_stdev=bench.stdev() / median if bench.get_nvalue() > 1 else 0.0,
            base_s=twin.median() if twin is not None else 0.0,
            values=tuple(bench.get_values()),
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
        f"{'benchmark':36} {'N0':>6} {'N':>9} {'median':>10} {'+-sd':>6} {'+-ci':>6} "
        f"{'base':>9} {'per iter (net)':>14} {'x glibc':>7} {'x noop':>7}"
    )
    lines = [header, "-" * len(header)]
    for name, r in rows.items():  # in the order they were run
        unsampled = name.startswith("unsampled/")
        spread = r.median_spread
        ci = "  n/a " if math.isnan(spread) else f"{spread * 100:5.1f}%"
        lines.append(
            f"{name:36} {r.base_iterations:6d} {r.iterations:9d} {r.median_s * 1e3:7.1f} ms "
            f"{r.rel_stdev * 100:5.1f}% {ci} {r.base_s * 1e3:6.2f} ms "
            f"{_fmt_time(r.per_iter_s):>14} "
            f"{_ratio(r, glibc if unsampled else None):>7} "
            f"{_ratio(r, noop if unsampled else None):>7}"
            f"{' noisy' if noise.is_noisy(spread) else ''}"
        )
    lines.append("")
    lines.append("median: pyperf median wall time of one run of `loop N0+N 32`;")
    lines.append("+-sd: stdev/median; +-ci: half-width of the median's 95% bootstrap interval,")
    lines.append(f"relative (noisy: over {noise.NOISY * 100:.0f}%, or a single value);")
    lines.append("base: median of the same command with N0 iterations (0 unsampled; num_objects")
    lines.append("sampled, so each slot's first-use fault is in the base);")
    lines.append("per iter (net) = (median - base) / N; ratios (unsampled rows only) are")
    lines.append("between net per-iteration costs.")
    return "\n".join(lines)


def ratio_ci(num: Row, den: Row) -> tuple[float, float]:
    """95% bootstrap interval of the ratio of net per-iteration medians (base held fixed)."""
    e = noise.ratio_estimate(num.values, den.values, num.base_s, den.base_s)
    scale = den.iterations / num.iterations
    return e.low * scale, e.high * scale


def verdicts(rows: dict[str, Row]) -> list[str]:
    out: list[str] = []
    kf, noop, glibc = rows.get(KFENCE_DEFAULT), rows.get(NOOP), rows.get(GLIBC)
    if kf and noop and glibc:
        ratio = kf.per_iter_s / noop.per_iter_s
        raw = kf.median_s / noop.median_s
        lo, hi = ratio_ci(kf, noop)
        if ratio > TARGET_UNSAMPLED_VS_NOOP:
            tag = "MISS"
        else:  # "MET?": the point estimate meets it, the interval reaches past it
            tag = "MET " if hi <= TARGET_UNSAMPLED_VS_NOOP else "MET?"
        out.append(
            f"[{tag}] unsampled kfence vs "
            f"do-nothing interposer: {ratio:.3f}x net (95% CI {lo:.3f}-{hi:.3f}; "
            f"{raw:.3f}x raw wall time), target <= "
            f"{TARGET_UNSAMPLED_VS_NOOP:.2f}x; vs glibc {kf.per_iter_s / glibc.per_iter_s:.3f}x "
            f"(interposer alone {noop.per_iter_s / glibc.per_iter_s:.3f}x)"
        )
    sampled = rows.get(SAMPLED_DEFAULT)
    if sampled:
        us = sampled.per_iter_s * 1e6
        gross = sampled.median_s / (sampled.iterations + sampled.base_iterations) * 1e6
        out.append(
            f"[{'MET ' if us <= TARGET_SAMPLED_US else 'MISS'}] sampled malloc+free cycle "
            f"(sample_rate=1): {us:.2f} us net ({gross:.2f} us gross = median/(N0+N)), "
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
        costs = [r.per_iter_s for r in scaled]
        series = ", ".join(
            f"{r.name.rsplit('num_objects=', 1)[1]}: {_fmt_time(r.per_iter_s).strip()}"
            for r in scaled
        )
        if min(costs) <= 0:  # a base twin slower than its loop: noise swallowed the cost
            out.append(f"[n/a ] {group} cost vs num_objects ({series}): a net cost <= 0, "
                       "too noisy to compare")
            continue
        spread = max(costs) / min(costs)
        out.append(
            f"[{'MET ' if spread <= TARGET_FLAT_SPREAD else 'MISS'}] {group} cost vs num_objects "
            f"({series}): max/min = {spread:.3f}x, target <= {TARGET_FLAT_SPREAD:.2f}x"
        )
    return out


def summarize(path: Path, with_header: bool = True) -> str:
    """The table and verdicts as text; with_header: as markdown, after the machine that
    measured them (read from the file's metadata)."""
    rows = load_rows(path)
    text = format_table(rows) + "\n\n" + "\n".join(verdicts(rows))
    if not with_header:
        return text
    suite = pyperf.BenchmarkSuite.load(str(path))
    head = machine.header(machine.from_metadata(suite.get_metadata()))
    return "\n".join([*head, "```", text, "```"])


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
