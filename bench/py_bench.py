#!/usr/bin/env python3
"""pyperf benchmarks of kfence_py's Python API.

* buffer/*: one allocate+free cycle, timed from Python:
  - kfence_py.alloc+free: kfence_py.alloc(64).free(), a guarded buffer through
    the public API (slot, mprotect, canary fill, stack capture; at free the
    canary check, mprotect and madvise);
  - GuardedBufferBase+free: the same through the C type alone (csrc/pyext.c),
    without api.alloc's argument checks in Python;
  - mmap+close: mmap.mmap(-1, 4096).close(), an anonymous 4 KiB mapping and its
    munmap (Python maps it MAP_SHARED), the reference of issue 13's target;
  - mmap-private+close: the same mapping MAP_PRIVATE, as the pool's pages are;
  - syscalls-floor: what a guarded cycle cannot do without in its design, on a
    page between two PROT_NONE pages: mprotect read-write, a 4 KiB fill,
    mprotect PROT_NONE, madvise(MADV_FREE), through ctypes;
  - ctypes-floor: the same four calls to a libc function that does nothing
    (labs), the part of syscalls-floor that is ctypes's own;
  - bytearray: bytearray(64), what an unguarded buffer costs.
* workload/<name>/plain and workload/<name>/python_allocator: small Python
  workloads without kfence_py, and after
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
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import mmap
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
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
        self.madvise = libc.madvise
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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
        self.madvise(self.page, PAGE, mmap.MADV_FREE)

    def calls_only(self) -> None:
        labs = self.labs
        labs(1)
        labs(2)
        labs(3)
        labs(4)


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


WORKLOADS: dict[str, Callable[[], None]] = {
    "json": work_json,
    "dict": work_dict,
    "re": work_re,
    "objects": work_objects,
}


def timed(func: Callable[[], None], sample: bool) -> Callable[[int], float]:
    def run(loops: int) -> float:
        if sample and not kfence_py.python_allocator_sampled():
            kfence_py.enable(python_allocator=True)
        start = time.perf_counter()
        for _ in range(loops):
            func()
        return time.perf_counter() - start

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


def main() -> int:
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
