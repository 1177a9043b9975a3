#!/usr/bin/env python3
"""pyperf benchmarks of kfence_py's Python API.

* buffer/*: one allocate+free cycle, timed from Python:
  - kfence_py.alloc+free: kfence_py.alloc(64).free(), a guarded buffer through
    the public API (slot, mprotect, canary fill, stack capture; at free the
    canary check and mprotect);
  - GuardedBufferBase+free: the same through the C type alone (csrc/pyext.c),
    without api.alloc's argument checks in Python;
  - mmap+close: mmap.mmap(-1, 4096).close(), an anonymous 4 KiB mapping and its
    munmap (Python maps it MAP_SHARED), the reference of issue 13's target;
  - mmap-private+close: the same mapping MAP_PRIVATE, as the pool's pages are;
  - syscalls-floor: what a guarded cycle cannot do without in its design, on a
    page between two PROT_NONE pages: mprotect read-write, a 4 KiB fill,
    mprotect PROT_NONE, through ctypes;
  - ctypes-floor: the same three calls to a libc function that does nothing
    (labs), the part of syscalls-floor that is ctypes's own;
  - bytearray: bytearray(64), what an unguarded buffer costs.
* workload/<name>/plain and workload/<name>/python_allocator: small Python
  workloads (json dumps+loads, dict/list churn, re, dataclass objects, and a
  pyperformance-like mix: a richards-like scheduler, deepcopy, generators,
  nbody-like floats, string formatting, sorting) without kfence_py, and after
  kfence_py.enable(python_allocator=True) at default options (the 10 ms time
  gate), which samples CPython's RAW, MEM and OBJ allocator domains.

pyperf runs each benchmark in its own worker processes, so enabling kfence_py
in the python_allocator twin cannot leak into the plain one.  A run is several
rounds, each a complete pyperf run over every benchmark (the order reversed
every other round), merged: a noisy minute on a shared machine then lands on
both sides of a ratio instead of on one.

    python bench/py_bench.py [--quick] [--only buffer] [--json bench/results/python_api.json]

The merged pyperf JSON carries the machine and the kfence_py commit
(machine.py) in its metadata; the table printed at the end is report.py's,
with the 95% interval of each median and ratio.

The cost of python_allocator=True alone, side by side (the ratio with its 95% CI):

    python bench/py_bench.py --paired --rounds 10 [--values 20] [--workload json ...] [--clock cpu]

Each round starts, per workload, a plain worker and a python_allocator one
(new interpreters, the same loop count, about 50 ms a value) and asks them for
a value in turn, the order swapped every other value: two values of a pair
are 50 ms apart, so they see the same load from the rest of the machine.  A
round's ratio is the mean of its python_allocator values over the mean of its
plain ones; the table gives the geometric mean over the rounds with its
Student t 95% interval and the load average seen at the rounds' starts.
`--clock cpu` times by the thread's CPU time instead of wall time.  Every
value goes to a pyperf JSON (--json, default bench/results/python_allocator.json,
each run one worker, its round in the metadata kfence_round) and the table
beside it (.md).  10 rounds of the 5 workloads take about 5 minutes on 2 idle
cores.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import logging
import math
import mmap
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import machine
import pyperf
from micro_bench import merge_rounds
from report import GUARDED, MMAP, ROUND_KEY, load_suite, python_table

import kfence_py
from kfence_py._pyext import GuardedBufferBase
from kfence_py.contract import PLACEMENTS

log = logging.getLogger("py_bench")

HERE = Path(__file__).resolve().parent
BUFFER_SIZE = 64
PAGE = 4096  # issue 13's reference mapping: 4 KiB, whatever the page size
PROT_NONE = 0  # <sys/mman.h>; the mmap module has PROT_READ and PROT_WRITE only


@dataclass(frozen=True)
class Plan:
    rounds: int
    pyperf: tuple[str, ...]  # pyperf options of each round


QUICK = Plan(3, ("-p", "2", "-n", "3", "-w", "1", "--min-time", "0.05"))
FULL = Plan(5, ("-p", "4", "-n", "3", "-w", "1"))


# === Buffers ===


def bench_guarded(loops: int) -> float:
    alloc = kfence_py.alloc
    alloc(BUFFER_SIZE).free()  # the library started before the clock
    start = time.perf_counter()
    for _ in range(loops):
        alloc(BUFFER_SIZE).free()
    return time.perf_counter() - start


def bench_guarded_type(loops: int) -> float:
    kfence_py.alloc(BUFFER_SIZE).free()
    right = PLACEMENTS.index("right")
    start = time.perf_counter()
    for _ in range(loops):
        GuardedBufferBase(BUFFER_SIZE, right, 0, True).free()
    return time.perf_counter() - start


def bench_mmap(loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        mmap.mmap(-1, PAGE).close()
    return time.perf_counter() - start


def bench_mmap_private(loops: int) -> float:
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    start = time.perf_counter()
    for _ in range(loops):
        mmap.mmap(-1, PAGE, flags=private).close()
    return time.perf_counter() - start


class Floor:
    """One page between two PROT_NONE pages, as a pool slot, and the libc calls on it."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        self.mprotect = libc.mprotect
        self.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.labs = libc.labs
        self.labs.argtypes = [ctypes.c_long]
        base = self.mmap(None, 3 * PAGE, PROT_NONE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of the floor's pages failed")
        self.page = base + PAGE

    def cycle(self) -> None:
        if self.mprotect(self.page, PAGE, mmap.PROT_READ | mmap.PROT_WRITE):
            raise OSError(ctypes.get_errno(), "mprotect")
        ctypes.memset(self.page, 0xAA, PAGE)
        self.mprotect(self.page, PAGE, PROT_NONE)

    def calls_only(self) -> None:
        labs = self.labs
        labs(1)
        labs(2)
        labs(3)


def bench_floor(loops: int) -> float:
    cycle = Floor().cycle
    start = time.perf_counter()
    for _ in range(loops):
        cycle()
    return time.perf_counter() - start


def bench_ctypes(loops: int) -> float:
    calls = Floor().calls_only
    start = time.perf_counter()
    for _ in range(loops):
        calls()
    return time.perf_counter() - start


def bench_bytearray(loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        bytearray(BUFFER_SIZE)
    return time.perf_counter() - start


BUFFERS: dict[str, Callable[[int], float]] = {
    GUARDED: bench_guarded,
    "buffer/GuardedBufferBase+free": bench_guarded_type,
    MMAP: bench_mmap,
    "buffer/mmap-private+close": bench_mmap_private,
    "buffer/syscalls-floor": bench_floor,
    "buffer/ctypes-floor": bench_ctypes,
    "buffer/bytearray": bench_bytearray,
}


# === Python workloads ===

WORD = re.compile(r"\b([a-z]{3,})\b")
TEXT = " ".join(f"lorem{i % 97} ipsum dolor sit amet consectetur {i}" for i in range(400))


def work_json() -> None:
    data = [{"id": i, "name": f"n{i}", "tags": [i, i + 1, str(i)]} for i in range(300)]
    json.loads(json.dumps(data))


def work_dict() -> None:
    d: dict[str, list[int]] = {}
    for i in range(3000):
        d.setdefault(f"key{i % 500}", []).append(i)
    sorted(d.items(), key=lambda kv: len(kv[1]))


def work_re() -> None:
    Counter(m.group(1) for m in WORD.finditer(TEXT)).most_common(5)


@dataclass
class Point:
    x: float
    y: float


def work_objects() -> None:
    pts = [Point(i, i * 0.5) for i in range(2000)]
    sum(p.x * p.y for p in pts)


# A pyperformance-like mix, each part a small cousin of one of its benchmarks.


class Task:
    """richards: objects on a run queue, method calls, attribute updates."""

    def __init__(self, ident: int, work: int) -> None:
        self.ident = ident
        self.work = work
        self.done = 0

    def step(self) -> bool:
        self.done += 1
        return self.done < self.work


def mix_scheduler() -> None:
    queue = deque(Task(i, 1 + i % 7) for i in range(300))
    while queue:
        task = queue.popleft()
        if task.step():
            queue.append(task)


def mix_deepcopy() -> None:
    tree = {"k": [{"id": i, "v": [i, str(i), (i, i + 1)]} for i in range(80)], "n": None}
    copy.deepcopy(tree)


def mix_generators() -> None:
    def walk(depth: int) -> Iterator[int]:
        if depth:
            yield from walk(depth - 1)
            yield depth
            yield from walk(depth - 1)

    sum(walk(10))


def mix_nbody() -> None:
    bodies = [[float(i), i * 0.5, i * 0.25, 1.0 + i % 3] for i in range(12)]
    for _ in range(20):
        for i, (x1, y1, z1, m1) in enumerate(bodies):
            for x2, y2, z2, m2 in bodies[i + 1:]:
                dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
                d2 = dx * dx + dy * dy + dz * dz + 0.01
                bodies[i][3] = m1 + m2 / (d2 * d2 ** 0.5) * 1e-9


def mix_strings() -> None:
    lines = [f"{i:05d} INFO module{i % 9}: request {i * 7} took {i / 3:.2f} ms" for i in range(400)]
    fields = [line.split(" ", 3) for line in lines]
    "\n".join(" | ".join(f[::-1]).upper() for f in fields if f[1] == "INFO")


def mix_sort() -> None:
    rows = [(f"name{(i * 7919) % 1000}", (i * 31) % 97, i) for i in range(600)]
    sorted(rows, key=lambda r: (r[1], r[0]))


def work_mix() -> None:
    mix_scheduler()
    mix_deepcopy()
    mix_generators()
    mix_nbody()
    mix_strings()
    mix_sort()


WORKLOADS: dict[str, Callable[[], None]] = {
    "json": work_json,
    "dict": work_dict,
    "re": work_re,
    "objects": work_objects,
    "mix": work_mix,
}


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    # This thread's CPU time: what the code costs, without the time it waited
    # for a CPU while other processes ran (a shared, loaded machine).
    "cpu": time.thread_time,
}


def timed(func: Callable[[], None], sample: bool,
          clock: Callable[[], float] = time.perf_counter) -> Callable[[int], float]:
    def run(loops: int) -> float:
        if sample and not kfence_py.python_allocator_sampled():
            kfence_py.enable(python_allocator=True)
            if not kfence_py.python_allocator_sampled():
                raise SystemExit("kfence_py.enable(python_allocator=True) did not hook "
                                 "CPython's allocator (see the warning above)")
        start = clock()
        for _ in range(loops):
            func()
        return clock() - start

    return run


def benchmarks(only: set[str]) -> list[tuple[str, Callable[[int], float]]]:
    out: list[tuple[str, Callable[[int], float]]] = []
    if "buffer" in only:
        out += BUFFERS.items()
    if "workload" in only:
        for name, func in WORKLOADS.items():
            out.append((f"workload/{name}/plain", timed(func, False)))
            out.append((f"workload/{name}/python_allocator", timed(func, True)))
    return out


GROUPS = ("buffer", "workload")


# === Rounds ===


def run_round() -> int:
    """One pyperf run (or one of its workers) over the selected benchmarks."""
    runner = pyperf.Runner(add_cmdline_args=lambda cmd, args: cmd.extend(
        ["--round", str(args.round), "--only", args.only]))
    runner.argparser.add_argument("--round", type=int, required=True)
    runner.argparser.add_argument("--only", default=",".join(GROUPS))
    args = runner.parse_args()
    runner.metadata["kfence_options"] = "(default)"
    runner.metadata[ROUND_KEY] = args.round  # report.py pairs values of the same round
    order = benchmarks(set(args.only.split(",")))
    if args.round % 2:
        order.reverse()
    for name, func in order:
        runner.bench_time_func(name, func)
    return 0


def drive(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    rounds = args.rounds or plan.rounds
    snap = machine.snapshot(machine.package_source())
    log.info("kfence_py %s (commit %s); %d rounds of pyperf %s", snap.kfence_py,
             snap.short_commit(), rounds, " ".join(plan.pyperf))
    out: Path = args.json.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for rnd in range(rounds):
        part = out.with_name(f"{out.stem}.round{rnd}.json")
        part.unlink(missing_ok=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--round", str(rnd),
                        "--only", args.only, "--quiet", "-o", str(part), *plan.pyperf],
                       check=True)
        parts.append(part)
    merged = merge_rounds(parts)
    names = [name for name, _ in benchmarks(set(args.only.split(",")))]
    machine.stamp_benchmarks(merged.values(), snap)
    pyperf.BenchmarkSuite([merged[n] for n in names if n in merged]).dump(str(out), replace=True)
    timings, stamped = load_suite(out)
    print("\n".join([*machine.header(stamped), *python_table(timings)]))
    log.info("pyperf JSON written to %s", out)
    return 0


# === Side by side: python_allocator=True against plain (--paired) ===

MODES = ("plain", "python_allocator")
VALUE_TIME = 0.05  # seconds per value: pairs of values this close share the machine's load


def serve(workload: str, mode: str, loops: int, clock_name: str) -> None:
    """A worker: one value per line read from stdin ("run"), until "quit" or EOF."""
    run = timed(WORKLOADS[workload], mode == "python_allocator", CLOCKS[clock_name])
    run(1)  # python_allocator: enable() before the first value
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(repr(run(loops) / loops), flush=True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)


class Worker:
    """One mode of one workload in its own interpreter, asked for one value at a time."""

    def __init__(self, workload: str, mode: str, loops: int, clock: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", workload, mode,
             str(loops), clock],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._read() != "ready":
            raise SystemExit(f"{workload}/{mode}: the worker did not start")

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a worker exited with {self.proc.wait()}")
        return line.strip()

    def value(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> int:
        """Stop it; its peak RSS in bytes."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rss = int(self._read())
        self.proc.wait()
        return rss


@dataclass(frozen=True)
class RatioRow:
    workload: str
    rounds: int
    plain_ms: float  # median of every value
    hooked_ms: float
    ratio: float  # geometric mean of the rounds' ratios
    low: float  # its 95% confidence interval (Student t over the rounds)
    high: float
    load_avg: tuple[float, float, float]  # min, median, max of os.getloadavg()[0] at rounds


def loops_for(func: Callable[[], None]) -> int:
    """Loops per value so that one value takes about VALUE_TIME, as measured here."""
    func()
    n, elapsed = 1, 0.0
    while elapsed < VALUE_TIME / 2:
        start = time.perf_counter()
        for _ in range(n):
            func()
        elapsed = time.perf_counter() - start
        n *= 2
    return max(1, round(VALUE_TIME / (elapsed / (n // 2))))


def measure_round(workload: str, loops: int, args: argparse.Namespace,
                  rnd: int) -> dict[str, pyperf.Run]:
    """Both modes alive at once, asked in turn: plain then python_allocator, and the
    other way round every other time, so each pair of values sees the same load."""
    load = os.getloadavg()[0]
    workers = {mode: Worker(workload, mode, loops, args.clock) for mode in MODES}
    values: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(args.warmups + args.values):
        for mode in (MODES if (i + rnd) % 2 == 0 else MODES[::-1]):
            values[mode].append(workers[mode].value())
    runs = {}
    for mode, worker in workers.items():
        rss = worker.close()
        warm, kept = values[mode][:args.warmups], values[mode][args.warmups:]
        runs[mode] = pyperf.Run(kept, warmups=[(loops, v * loops) for v in warm], metadata={
            "name": f"workload/{workload}/{mode}", "loops": loops, "unit": "second",
            "kfence_options": "(default)", "kfence_round": rnd, "kfence_clock": args.clock,
            "load_avg_1min": load, "mem_max_rss": rss,
        })
    return runs


def ratio_row(workload: str, plain: pyperf.Benchmark, hooked: pyperf.Benchmark) -> RatioRow:
    from scipy import stats

    ratios = [statistics.fmean(h.values) / statistics.fmean(p.values)
              for p, h in zip(plain.get_runs(), hooked.get_runs())]
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    loads = sorted(float(run.get_metadata()["load_avg_1min"]) for run in plain.get_runs())
    return RatioRow(workload, len(logs), plain.median() * 1e3, hooked.median() * 1e3,
                    math.exp(mean), math.exp(mean - half), math.exp(mean + half),
                    (loads[0], statistics.median(loads), loads[-1]))


def render_ratios(rows: list[RatioRow], command: str, clock: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Clock: {clock} time. Ratio: geometric mean over the rounds of (mean time "
             "with python_allocator=True / mean time plain), 95% Student t interval.", "",
             "| workload | plain | python_allocator=True | ratio | 95% CI | rounds "
             "| load avg (min/median/max) |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r.workload} | {r.plain_ms:.3f} ms | {r.hooked_ms:.3f} ms | "
                     f"{r.ratio:.3f}x | {r.low:.3f} to {r.high:.3f} | {r.rounds} | "
                     f"{r.load_avg[0]:.2f} / {r.load_avg[1]:.2f} / {r.load_avg[2]:.2f} |")
    lines += ["", f"Machine: {os.cpu_count()} CPUs; load average at the end: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg())]
    return "\n".join(lines)


def drive_paired(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="py_bench.py --paired",
        description="python_allocator=True against plain, side by side")
    parser.add_argument("--rounds", type=int, required=True,
                        help="pairs of worker processes per workload (the ratio's samples)")
    parser.add_argument("--values", type=int, default=20,
                        help="values per worker, taken in turn with its twin")
    parser.add_argument("--warmups", type=int, default=2, help="values dropped first")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                        help="a workload (repeatable; default: all)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the thread's CPU time (steadier on a loaded machine)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "python_allocator.json",
                        help="pyperf JSON of every value, replaced; the table goes beside it (.md)")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.values < 1:
        parser.error("at least 2 rounds (one ratio each) and 1 value")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    workloads = args.workload or list(WORKLOADS)
    loops = {name: loops_for(WORKLOADS[name]) for name in workloads}
    log.info("loops per value: %s", loops)

    runs: dict[str, list[pyperf.Run]] = {}
    started = time.monotonic()
    for rnd in range(args.rounds):
        log.info("round %d/%d, load average %.2f", rnd + 1, args.rounds, os.getloadavg()[0])
        for name in workloads:
            for mode, run in measure_round(name, loops[name], args, rnd).items():
                runs.setdefault(f"workload/{name}/{mode}", []).append(run)
    benches = {name: pyperf.Benchmark(r) for name, r in runs.items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    pyperf.BenchmarkSuite(list(benches.values())).dump(str(args.json), replace=True)

    rows = [ratio_row(name, benches[f"workload/{name}/plain"],
                      benches[f"workload/{name}/python_allocator"]) for name in workloads]
    table = render_ratios(rows, shlex.join(["python", "bench/py_bench.py", "--paired", *argv]),
                          args.clock)
    args.json.with_suffix(".md").write_text(table + "\n")
    print(table)
    log.info("%.0f s; every value in %s", time.monotonic() - started, args.json)
    return 0


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    if sys.argv[1:2] == ["--paired"]:
        return drive_paired(sys.argv[2:])
    if "--round" in sys.argv:
        return run_round()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.rounds} short rounds (about a minute) instead of "
                        f"{FULL.rounds}")
    parser.add_argument("--rounds", type=int, help="rounds to interleave (default: the plan's)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help="comma-separated groups: buffer, workload (default: both)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "python_api.json",
                        help="merged pyperf JSON output, replaced if present")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(GROUPS)
    if unknown:
        parser.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
