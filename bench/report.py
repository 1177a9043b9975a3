#!/usr/bin/env python3
"""Summary table (markdown) and overhead plot (PNG) of a bench/run.py run.

Reads bench/results/{preflight,programs,python_api}.json (the raw pyperf
values and the preflight runs) and writes summary.md and overhead.png next to
them. Everything in the summary comes from those files, the machine header
included (bench/machine.py's metadata), so it can be regenerated anywhere.
Each cell's ± is the half-width of its 95% bootstrap interval (bench/noise.py);
cells over ±10% are marked noisy.

    python bench/report.py [bench/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import machine
import micro_summary
import noise
import pyperf
from machine import Machine

log = logging.getLogger("report")

DEFAULT_DIR = Path(__file__).resolve().parent / "results"

# Issue 5's, 3's and 13's targets.
TARGET_UNSAMPLED_VS_INTERPOSER = 1.03
TARGET_REAL_DEFAULT = 1.02
TARGET_TWO_THREADS = 1.8
TARGET_GUARDED_VS_MMAP = 1.0  # kfence_py.alloc+free against mmap(4 KiB)+close, same run
TARGET_PY_ALLOCATOR = 1.03

BASE = "glibc"  # the mode every time and RSS ratio is taken to
# run.py times the pairs slower than this many times glibc apart from the rounds.
SLOW_RATIO = 3.0

GUARDED = "buffer/kfence_py.alloc+free"
MMAP = "buffer/mmap+close"


@dataclass
class Outcome:
    """The preflight run of one (workload, mode) pair."""

    workload: str
    mode: str
    status: str  # "ok", "not installed", "timeout (...)", "crash (...)", "exit N", ...
    seconds: float = 0.0
    rss_kib: int = 0
    samples: int | None = None  # kfence modes: sampled allocations over the run
    note: str | None = None  # stderr tail when not ok


# The round (interleaved pyperf run) that measured a run's values, in its pyperf metadata.
ROUND_KEY = machine.PREFIX + "round"


@dataclass(frozen=True)
class Timing:
    """A benchmark's raw values (seconds), by the pyperf run and round that measured them."""

    runs: tuple[tuple[int | None, tuple[float, ...]], ...]  # (round or None, values)

    @classmethod
    def of(cls, values: tuple[float, ...], rnd: int | None = None) -> Timing:
        return cls(((rnd, values),))

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(v for _, values in self.runs for v in values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def by_round(self) -> dict[int, list[float]]:
        """Values by round; empty when a run does not say its round."""
        out: dict[int, list[float]] = {}
        for rnd, values in self.runs:
            if rnd is None:
                return {}
            out.setdefault(rnd, []).extend(values)
        return out

    def estimate(self) -> noise.Estimate:
        return noise.median_estimate(self.values)

    def ratio(self, base: Timing) -> noise.Estimate:
        """Paired within rounds when both were measured in the same rounds (noise.py)."""
        paired = noise.paired_ratio_estimate(self.by_round(), base.by_round())
        return paired or noise.ratio_estimate(self.values, base.values)


def load_suite(path: Path) -> tuple[dict[str, Timing], Machine | None]:
    """The raw values of every benchmark of a pyperf file, and the machine stamped into it."""
    if not path.exists():
        return {}, None
    suite = pyperf.BenchmarkSuite.load(str(path))
    timings = {}
    for bench in suite.get_benchmarks():
        runs = []
        for run in bench.get_runs():
            if run.values:  # not a calibration run
                rnd = run.get_metadata().get(ROUND_KEY)
                runs.append((rnd if isinstance(rnd, int) else None, tuple(run.values)))
        timings[bench.get_name()] = Timing(tuple(runs))
    return timings, machine.from_metadata(suite.get_metadata())


def geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else math.nan


class Results:
    def __init__(self, directory: Path, with_micro: bool = False) -> None:
        raw = json.loads((directory / "preflight.json").read_text())
        self.outcomes = {k: Outcome(**v) for k, v in raw["outcomes"].items()}
        self.timings, programs_machine = load_suite(directory / "programs.json")
        self.python, python_machine = load_suite(directory / "python_api.json")
        # The programs' snapshot first; preflight.json has it even when nothing was timed.
        self.machine = programs_machine or machine.from_dict(raw.get("machine") or {})
        self.other_machines = {"Python API": python_machine} if python_machine else {}
        micro = directory / "micro.json"
        self.micro = (micro_summary.summarize(micro, with_header=False)
                      if with_micro and micro.exists() else None)
        self.workloads = list(dict.fromkeys(o.workload for o in self.outcomes.values()))
        self.modes = list(dict.fromkeys(o.mode for o in self.outcomes.values()))
        self._estimates: dict[tuple[str, str, str], noise.Estimate | None] = {}

    def get(self, workload: str, mode: str) -> Outcome | None:
        return self.outcomes.get(f"{workload}/{mode}")

    def time(self, workload: str, mode: str) -> float | None:
        t = self.timings.get(f"{workload}/{mode}")
        return t.median if t else None

    def time_estimate(self, workload: str, mode: str,
                      base: str = "glibc") -> noise.Estimate | None:
        """The cell's ratio to base with its interval (the base's own median for base)."""
        key = (workload, mode, base)
        if key not in self._estimates:
            t = self.timings.get(f"{workload}/{mode}")
            b = self.timings.get(f"{workload}/{base}")
            if t is None or b is None:
                est = None
            elif mode == base:
                e = t.estimate()
                est = noise.Estimate(1.0, e.low / e.value, e.high / e.value, e.values)
            else:
                est = t.ratio(b)
            self._estimates[key] = est
        return self._estimates[key]

    def ratio(self, workload: str, mode: str, base: str = "glibc") -> float | None:
        """The figure of the cell (paired within rounds where it can be)."""
        est = self.time_estimate(workload, mode, base)
        return est.value if est is not None else None

    def kinds(self) -> dict[str, str]:
        """Workload kind from its name, as run.py lists them."""
        micro = {"malloc32", "mixed", "realloc", "threads-cross", "heap100k"}
        scale = {"threads1", "threads2"}
        return {w: "micro" if w in micro else "scale" if w in scale else "real"
                for w in self.workloads}


def cell_time(r: Results, w: str, m: str) -> str:
    o = r.get(w, m)
    if o is None:
        return ""
    if o.status != "ok":
        return o.status
    est = r.time_estimate(w, m)
    if est is None:
        return "not timed"
    if m == BASE:  # not a ratio: how far glibc's own median moved (with the load)
        return f"1.00x (median {est.pm()})"
    return f"{est.value:.2f}x {est.pm()}{est.mark()}"


def noisy_cells(r: Results) -> tuple[int, int, int]:
    """(noisy, paired, timed) ratio cells of the time table (the glibc row is no ratio)."""
    ests = [r.time_estimate(w, m) for w in r.workloads for m in r.modes if m != BASE]
    timed = [e for e in ests if e is not None]
    return sum(e.noisy for e in timed), sum(e.paired for e in timed), len(timed)


def cell_rss(r: Results, w: str, m: str) -> str:
    o, base = r.get(w, m), r.get(w, "glibc")
    if o is None:
        return ""
    if o.status != "ok":
        return o.status
    return f"{o.rss_kib / base.rss_kib:.2f}x" if base and base.rss_kib else "?"


def cell_samples(r: Results, w: str, m: str) -> str:
    o = r.get(w, m)
    if o is None:
        return ""
    if o.status != "ok" or o.samples is None:
        return o.status if o.status != "ok" else "n/a"
    return f"{o.samples / o.seconds:,.0f}" if o.seconds else "?"


def table(r: Results, modes: list[str], cell: Callable[[Results, str, str], str],
          first: str = "mode") -> list[str]:
    head = f"| {first} | " + " | ".join(r.workloads) + " |"
    lines = [head, "|---" * (len(r.workloads) + 1) + "|"]
    for m in modes:
        cells = [cell(r, w, m) for w in r.workloads]
        lines.append(f"| {m} | " + " | ".join(c or "-" for c in cells) + " |")
    return lines


def fmt(x: float | None, spec: str = ".3f", suffix: str = "x") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{spec}}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def judged(e: noise.Estimate | None, target: float, at_most: bool = True) -> str:
    """Met or missed (figure ≤ target, or ≥) when the 95% interval says so; a noisy straddle
    is undecided."""
    if e is None:
        return "n/a"
    if not math.isnan(e.spread):
        low, high = (e.low, e.high) if at_most else (-e.high, -e.low)
        bound = target if at_most else -target
        if high <= bound:
            return "**met**"
        if low > bound:
            return "**missed**"
    if e.noisy:
        return "undecided (noisy)"
    return verdict(e.value <= target if at_most else e.value >= target)


def targets(r: Results) -> list[str]:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    unsampled = r.time_estimate("malloc32", "kfence-default", "interposer")
    floor = r.time_estimate("malloc32", "interposer")
    lines.append(f"| unsampled malloc(32)+free ≤ {TARGET_UNSAMPLED_VS_INTERPOSER}x "
                 f"interposer (whole process) | {interval(unsampled) if unsampled else 'n/a'} "
                 f"(interposer {interval(floor) if floor else 'n/a'} glibc) | "
                 f"{judged(unsampled, TARGET_UNSAMPLED_VS_INTERPOSER)} |")
    reals = [w for w, k in r.kinds().items() if k == "real"]
    ests = [(r.time_estimate(w, "kfence-default"), w) for w in reals]
    worst = [(e, w) for e, w in ests if e is not None]
    if worst:
        e, w = max(worst, key=lambda p: p[0].value)
        lines.append(f"| real programs at default ≤ {TARGET_REAL_DEFAULT}x glibc each | "
                     f"worst {interval(e)} ({w}) | {judged(e, TARGET_REAL_DEFAULT)} |")
    beats = []
    for w in reals:
        k, s = r.ratio(w, "kfence-default"), r.ratio(w, "scudo+gwp-asan")
        if k is not None and s is not None:
            beats.append((k < s, w, k, s))
    if beats:
        lost = [f"{w} ({k:.3f}x vs {s:.3f}x)" for ok, w, k, s in beats if not ok]
        lines.append("| default below Scudo+GWP-ASan(5000) on every real workload | "
                     + (f"lost on {', '.join(lost)}" if lost else
                        f"below on all {len(beats)}") + f" | {verdict(not lost)} |")
    for m in ("glibc", "interposer", "kfence-default", "kfence-sample_rate=1"):
        t1, t2 = r.timings.get(f"threads1/{m}"), r.timings.get(f"threads2/{m}")
        if t1 and t2:  # twice the work in the time: 2 x t1 / t2
            e = t1.ratio(t2)
            scale = dataclasses.replace(e, value=2 * e.value, low=2 * e.low, high=2 * e.high)
            lines.append(f"| two threads ≥ {TARGET_TWO_THREADS}x one thread ({m}) | "
                         f"{interval(scale)} | {judged(scale, TARGET_TWO_THREADS, False)} |")
    g, mm = r.python.get(GUARDED), r.python.get(MMAP)
    if g and mm:
        e = g.ratio(mm)
        lines.append(f"| kfence_py.alloc+free ≤ {TARGET_GUARDED_VS_MMAP:.1f}x an anonymous "
                     f"4 KiB mmap+close, same run | {interval(e)} ({g.median * 1e6:.1f} µs "
                     f"against {mm.median * 1e6:.1f} µs) | "
                     f"{judged(e, TARGET_GUARDED_VS_MMAP)} |")
    py = []
    for name in sorted({n.split("/")[1] for n in r.python if n.startswith("workload/")}):
        a = r.python.get(f"workload/{name}/plain")
        b = r.python.get(f"workload/{name}/python_allocator")
        if a and b:
            py.append((b.ratio(a), name))
    if py:
        e, w = max(py, key=lambda p: p[0].value)
        lines.append(f"| python_allocator=True ≤ {TARGET_PY_ALLOCATOR}x plain, each | "
                     f"worst {interval(e)} ({w}); geomean "
                     f"{geomean([p.value for p, _ in py]):.3f}x | "
                     f"{judged(e, TARGET_PY_ALLOCATOR)} |")
    return lines


def interval(e: noise.Estimate, of: str = "") -> str:
    """A ratio with its interval: "1.234x mmap (95% CI 1.200-1.300)", and noisy when it is."""
    what = f"{e.value:.3f}x{' ' + of if of else ''}"
    if math.isnan(e.spread):
        return f"{what} ({e.pm()}){e.mark()}"
    return f"{what} (95% CI {e.low:.3f}-{e.high:.3f}){e.mark()}"


def python_table(python: dict[str, Timing]) -> list[str]:
    """py_bench.py's benchmarks: median, its interval, and the ratio each is read as."""
    if not python:
        return []
    lines = ["| benchmark | median | ± (95% CI) | values | ratio |", "|---|---|---|---|---|"]
    mm = python.get(MMAP)
    for name, t in python.items():
        ratio = ""
        if name.endswith("/python_allocator"):
            plain = python.get(name.rsplit("/", 1)[0] + "/plain")
            ratio = interval(t.ratio(plain), "plain") if plain else ""
        elif name.startswith("buffer/") and name != MMAP and mm is not None:
            ratio = interval(t.ratio(mm), "mmap+close")
        e = t.estimate()
        lines.append(f"| {name} | {pyperf_fmt(e.value)} | {e.pm()}{e.mark()} | {e.values} "
                     f"| {ratio} |")
    return lines


def pyperf_fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def summary(r: Results, command_line: str, plot_name: str | None) -> str:
    glibc = " · ".join(f"{w} {r.time(w, 'glibc') or 0:.2f} s" for w in r.workloads)
    kfence_modes = [m for m in r.modes if m.startswith("kfence")]
    noisy, paired, timed = noisy_cells(r)
    counts = sorted({len(t.values) for t in r.timings.values()}) or [0]
    span = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    out = [
        "# kfence_py overhead", "",
        f"Command: `{command_line}`", "",
        *machine.header(r.machine, r.other_machines),
        "## Time as a ratio to glibc", "",
        "Each cell is the median of the ratios of the pair's values to glibc's values "
        "taken in the same round, seconds apart (pairs timed apart, slower than "
        f"{SLOW_RATIO:g}x glibc, are the ratio of the medians); ± is the half-width of its "
        f"95% bootstrap interval ({span} values per benchmark); **noisy**: over "
        f"±{noise.NOISY * 100:.0f}% or a single value. {paired} of {timed} ratios are "
        f"paired, {noisy} noisy. "
        "The glibc row gives the interval of glibc's own median, which moves with the "
        "machine's load; ratios paired within rounds do not.", "",
        f"glibc medians: {glibc}.", "",
        *table(r, r.modes, cell_time), "",
        "## Peak RSS as a ratio to glibc (one run, wait4 ru_maxrss)", "",
        *table(r, r.modes, cell_rss), "",
        "## Sampled allocations per second (kfence modes, from the state file)", "",
        *table(r, kfence_modes, cell_samples), "",
    ]
    py = python_table(r.python)
    if py:
        out += ["## Python API (py_bench.py, pyperf bench_time_func)", "",
                "Median time of one call; ± is the half-width of the median's 95% bootstrap "
                "interval; ratios (paired within rounds) with their 95% interval.", "", *py, ""]
    out += ["## Targets", "", *targets(r), ""]
    if plot_name:
        out += [f"![overhead against sample interval]({plot_name})", ""]
    if r.micro is not None:
        out += ["## Per-call costs (micro_bench.py)", "", "```", r.micro.rstrip(), "```", ""]
    notes = [f"- {k}: {o.status}: `{o.note}`" for k, o in r.outcomes.items()
             if o.status not in ("ok", "not installed") and o.note]
    if notes:
        out += ["## Notes on runs that did not finish", "", *notes, ""]
    return "\n".join(out)


# === Plot ===

PEERS = ("interposer", "kfence-sample_rate=5000", "kfence-sample_rate=100",
         "kfence-sample_rate=1", "scudo", "scudo+gwp-asan", "scudo+gwp-asan-rate=1",
         "electric-fence", "duma")


def plot(r: Results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install '.[bench]')")
        return False
    intervals = {"kfence-sample_interval=1": 1.0, "kfence-sample_interval=10": 10.0,
                 "kfence-default": 10.0, "kfence-sample_interval=100": 100.0}
    workloads = [w for w, k in r.kinds().items() if k != "scale"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=90)
    for w in workloads:
        pts = sorted({(x, r.ratio(w, m)) for m, x in intervals.items()
                      if r.ratio(w, m) is not None})
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=0.8,
                    alpha=0.6, label=f"kfence: {w}")
    xs = sorted(set(intervals.values()))
    gm = []
    for x in xs:
        vals = [r.ratio(w, m) for w in workloads for m, v in intervals.items() if v == x]
        vals = [v for v in vals if v is not None]
        gm.append(geomean(vals) if vals else math.nan)
    ax.plot(xs, gm, color="black", lw=2.5, marker="o", label="kfence: geomean")
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(p for p in PEERS if p in r.modes):
        vals = [r.ratio(w, m) for w in workloads]
        done = [v for v in vals if v is not None]
        if not done:
            continue
        label = f"{m} (geomean of {len(done)}/{len(vals)} workloads)"
        ax.axhline(geomean(done), color=cmap(i % 10), ls="--", lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:g} ms" for x in xs])
    ax.set_xlabel("kfence sample_interval (time gate)")
    ax.set_ylabel("run time / glibc (log)")
    ax.set_title("Overhead against sample interval, peers as horizontal lines")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(directory: Path, command_line: str, with_micro: bool = False) -> str:
    r = Results(directory, with_micro)
    png = directory / "overhead.png"
    text = summary(r, command_line, png.name if plot(r, png) else None)
    (directory / "summary.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--command", default="python bench/run.py",
                        help="the command line to show in the summary")
    parser.add_argument("--micro", action="store_true",
                        help="include micro_bench.py's table (micro.json in the directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(write_report(args.directory, args.command, args.micro))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
