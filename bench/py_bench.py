#!/usr/bin/env python3
"""pyperf benchmarks of kfence_py's Python API.

* buffer/*: one allocate+free cycle of a 64-byte kfence_py.alloc() guarded
  buffer, against bytearray(64) and an anonymous one-page mmap;
* workload/<name>/plain and workload/<name>/python_allocator: small Python
  workloads without kfence_py, and after
  kfence_py.enable(python_allocator=True) at default options (the 10 ms time
  gate), which samples CPython's RAW, MEM and OBJ allocator domains.

pyperf runs each benchmark in its own worker processes, so enabling kfence_py
in the python_allocator twin cannot leak into the plain one.

    python bench/py_bench.py -o bench/results/python_api.json [pyperf options]

run.py runs this with its own pyperf options.
"""

from __future__ import annotations

import json
import mmap
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyperf

import kfence_py

BUFFER_SIZE = 64


def bench_guarded(loops: int) -> float:
    alloc = kfence_py.alloc
    start = time.perf_counter()
    for _ in range(loops):
        alloc(BUFFER_SIZE).free()
    return time.perf_counter() - start


def bench_bytearray(loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        bytearray(BUFFER_SIZE)
    return time.perf_counter() - start


def bench_mmap(loops: int) -> float:
    page = mmap.PAGESIZE
    start = time.perf_counter()
    for _ in range(loops):
        mmap.mmap(-1, page).close()
    return time.perf_counter() - start


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


def main() -> None:
    runner = pyperf.Runner()
    runner.metadata["kfence_options"] = "(default)"
    runner.bench_time_func("buffer/kfence_py.alloc+free", bench_guarded)
    runner.bench_time_func("buffer/bytearray", bench_bytearray)
    runner.bench_time_func("buffer/mmap+close", bench_mmap)
    for name, func in WORKLOADS.items():
        runner.bench_time_func(f"workload/{name}/plain", timed(func, False))
        runner.bench_time_func(f"workload/{name}/python_allocator", timed(func, True))


if __name__ == "__main__":
    main()
