#!/usr/bin/env python3
"""Instructions that kfence_py's CPython allocator hooks add, counted with callgrind.

Wall time on a shared machine moves with its load; instruction counts do not.
Each workload of py_bench.py runs under `valgrind --tool=callgrind` in a new
interpreter, in three modes:

* plain: kfence_py imported, not enabled;
* enabled: kfence_py.enable(): the library started and its pool mapped (in
  process, without the preload, glibc's malloc is untouched), no hooks;
* hooks: kfence_py.enable(python_allocator=True): every PyMem call of the
  RAW, MEM and OBJ domains goes through the hooks.

Both kfence modes run with sample_interval=3600000: the time gate opens at
its first look and not again, so what is counted is the cost of the hooks on
unsampled calls (the countdown, the pool test, the dispatch to the allocator
below, a look at the gate every 256 calls).  The sampled path is paid per
second (about 100 samples/s at the default 10 ms gate), which valgrind's
slowdown would inflate 50-fold; py_bench.py --paired measures it in wall time.

Only the measured loop is counted: callgrind dumps its counters when
os.getppid() is called, just before and just after the loop.  hooks/enabled
is the hooks' own cost; enabled/plain shows what the library's mappings alone
do to the run (memory layout: memcpy alignment, pymalloc arenas).

    python bench/py_callgrind.py                         # every workload, 10 iterations
    python bench/py_callgrind.py -w json -w re --json out.json

Run it from a tree whose kfence_py is built (PYTHONPATH picks which one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("py_callgrind")

HERE = Path(__file__).resolve().parent
MODES = ("plain", "enabled", "hooks")
GATE_CLOSED = {"sample_interval": 3600000}
# Our hooks: the current names, and those of earlier versions (to measure them too).
HOOKS = frozenset({"kf_gil_malloc", "kf_gil_calloc", "kf_raw_malloc", "kf_raw_calloc",
                   "kf_realloc", "kf_free", "kf_malloc", "kf_calloc"})
PYEXT = "_pyext."  # the module holding the hooks, in callgrind's object names
MARK = "os_getppid"


@dataclass
class Profile:
    """One callgrind part: instructions by function (self) and calls into the hooks."""

    total: int = 0
    by_function: Counter[str] = field(default_factory=Counter)
    hook_calls: Counter[str] = field(default_factory=Counter)


def parse(path: Path) -> Profile:
    """A callgrind file written with --compress-strings=no --compress-pos=no."""
    prof = Profile()
    fn = obj = callee = ""
    after_calls = False
    for line in path.read_text(errors="replace").splitlines():
        if after_calls:  # the inclusive cost of the call just named: not self cost
            after_calls = False
            continue
        if line.startswith("ob="):
            obj = line[3:]
        elif line.startswith("fn="):
            fn = f"{line[3:]} [{Path(obj).name}]"
        elif line.startswith("cfn="):
            callee = line[4:]
        elif line.startswith("calls="):
            after_calls = True
            if callee in HOOKS and fn.split(" [")[0] not in HOOKS:
                prof.hook_calls[callee] += int(line[6:].split()[0])
        elif line.startswith("summary:"):
            prof.total = int(line.split()[1])
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2 and fn:
                prof.by_function[fn] += int(parts[1])
    return prof


def measure(workload: str, mode: str, iterations: int, workdir: Path) -> Profile:
    """Run one (workload, mode) under callgrind; the profile of the measured loop."""
    out = workdir / f"{workload}.{mode}.cg"
    cmd = ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
           f"--dump-before={MARK}", f"--callgrind-out-file={out}",
           sys.executable, str(Path(__file__).resolve()), "--child", workload, mode,
           str(iterations)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{workload}/{mode}: exit {res.returncode}\n{res.stderr[-3000:]}")
    # Parts: .1 up to the first mark, .2 the loop (up to the second mark), then the exit.
    parts = sorted(workdir.glob(f"{out.name}.*"), key=lambda p: int(p.suffix[1:]))
    if len(parts) < 2:
        raise SystemExit(f"{workload}/{mode}: callgrind wrote no part per {MARK}(): {parts}")
    return parse(parts[1])


def child(workload: str, mode: str, iterations: int) -> None:
    """The measured program: warm up, then the loop between two marks."""
    sys.path.insert(0, str(HERE))
    import py_bench

    import kfence_py

    func = py_bench.WORKLOADS[workload]
    if mode != "plain":
        kfence_py.enable(python_allocator=mode == "hooks", **GATE_CLOSED)
        if mode == "hooks" and not kfence_py.python_allocator_sampled():
            raise SystemExit("the CPython allocator hooks are not installed")
    for _ in range(3):
        func()
    os.getppid()
    for _ in range(iterations):
        func()
    os.getppid()


@dataclass
class Row:
    workload: str
    iterations: int
    instructions: dict[str, int]  # per iteration, by mode
    pymem_calls: int  # per iteration, into our hooks
    added_per_call: float  # (hooks - enabled) / pymem_calls
    hook_functions: dict[str, float]  # self instructions per PyMem call, top functions

    def ratio(self, mode: str, base: str) -> float:
        return self.instructions[mode] / self.instructions[base]


def analyse(workload: str, iterations: int, profiles: dict[str, Profile]) -> Row:
    calls = sum(profiles["hooks"].hook_calls.values())
    per_iter = {m: p.total // iterations for m, p in profiles.items()}
    added = profiles["hooks"].total - profiles["enabled"].total
    diff = Counter(profiles["hooks"].by_function)
    diff.subtract(profiles["enabled"].by_function)
    top = {f: n / calls for f, n in diff.most_common(8) if n > 0} if calls else {}
    return Row(workload, iterations, per_iter, calls // iterations,
               added / calls if calls else float("nan"), top)


def render(rows: list[Row]) -> str:
    lines = ["| workload | PyMem calls/iter | instr/iter plain | hooks/plain | hooks/enabled "
             "| enabled/plain | instr added per PyMem call |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r.workload} | {r.pymem_calls:,} | {r.instructions['plain']:,} | "
                     f"{r.ratio('hooks', 'plain'):.4f} | {r.ratio('hooks', 'enabled'):.4f} | "
                     f"{r.ratio('enabled', 'plain'):.4f} | {r.added_per_call:.1f} |")
    lines.append("")
    lines.append("Instructions per PyMem call by function (hooks minus enabled, self cost):")
    for r in rows:
        parts = ", ".join(f"{f.split(' [')[0]} {n:.2f}" for f, n in r.hook_functions.items())
        lines.append(f"- {r.workload}: {parts}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    sys.path.insert(0, str(HERE))
    from py_bench import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workload", action="append", choices=sorted(WORKLOADS),
                        help="a workload to measure (repeatable; default: all)")
    parser.add_argument("-n", "--iterations", type=int, default=10,
                        help="workload calls in the counted loop")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--keep", type=Path,
                        help="keep callgrind's files in this directory (callgrind_annotate)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    rows = []
    with tempfile.TemporaryDirectory(prefix="py_callgrind.") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for workload in args.workload or list(WORKLOADS):
            profiles = {}
            for mode in MODES:
                log.info("%s/%s under callgrind", workload, mode)
                profiles[mode] = measure(workload, mode, args.iterations, workdir)
            rows.append(analyse(workload, args.iterations, profiles))
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
