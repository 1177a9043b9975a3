#!/usr/bin/env python3
"""What a fork costs a preloaded process, with and without state_dir (pyperf).

One command runs, side by side and interleaved by pyperf's worker processes,
`forks N` (bench/micro/forks.c: N times fork, the child allocates once and
_exit()s, the parent waits) under plain glibc and under libkfence.so in these
modes, and prints each state_dir mode as a ratio to the same options without
state_dir (the issue's bar: within 2x):

    kfence, kfence+state_dir            default options (a child that does not
                                        sample takes no state of its own)
    kfence+4096, kfence+4096+state_dir  num_objects=4096
    kfence+rate1, kfence+rate1+state_dir
                                        sample_rate=1:num_objects=4096: every
                                        child takes its state (a file with its
                                        live inherited objects) at its malloc

    python bench/fork_bench.py [--quick] [--forks N]

The pyperf JSON (bench/results/forks/forks.json) carries the machine and the
kfence_py commit in its metadata (machine.py); the table printed at the end
starts with them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import machine
import pyperf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import kfence_py  # noqa: E402

MODES = {
    "glibc": None,
    "kfence": "",
    "kfence+state_dir": "state_dir={dir}",
    "kfence+4096": "num_objects=4096",
    "kfence+4096+state_dir": "num_objects=4096:state_dir={dir}",
    "kfence+rate1": "sample_rate=1:num_objects=4096",
    "kfence+rate1+state_dir": "sample_rate=1:num_objects=4096:state_dir={dir}",
}


def build(out: Path) -> Path:
    exe, src = out / "forks", HERE / "micro" / "forks.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", str(src), "-o", str(exe)], check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer values (rough figures)")
    parser.add_argument("--forks", type=int, default=200, help="forks per run (default 200)")
    args, rest = parser.parse_known_args()
    work = HERE / "results" / "forks"  # shared by pyperf's worker processes
    work.mkdir(parents=True, exist_ok=True)
    exe = build(work)
    out = work / "forks.json"
    runner = pyperf.Runner(processes=4 if args.quick else 10, values=3, warmups=1,
                           add_cmdline_args=lambda cmd, _: cmd.extend(
                               ["--forks", str(args.forks)]))
    worker = "--worker" in rest
    lib = kfence_py.lib_path()
    if not worker:
        snap = machine.snapshot(Path(lib))
        out.unlink(missing_ok=True)
        rest += ["--output", str(out)]
    sys.argv = [sys.argv[0], *rest]
    runner.parse_args()
    for name, options in MODES.items():
        cmd = ["env", "-u", "LD_PRELOAD", "-u", "KFENCE_OPTIONS"]
        if options is not None:
            state = work / name
            state.mkdir(mode=0o700, exist_ok=True)
            cmd += [f"LD_PRELOAD={lib}", f"KFENCE_OPTIONS={options.format(dir=state)}"]
        runner.bench_command(name, [*cmd, str(exe), str(args.forks)])
    if worker:
        return
    machine.stamp(out, snap)
    suite = pyperf.BenchmarkSuite.load(str(out))
    glibc = suite.get_benchmark("glibc").median()
    print()
    print("\n".join(machine.header(snap)))
    print(f"{args.forks} forks (median, ±stdev; ratio to the same options without "
          "state_dir, and to glibc):")
    for bench in suite.get_benchmarks():
        name = bench.get_name()
        base = suite.get_benchmark(name.removesuffix("+state_dir")).median()
        print(f"  {name:24s} {bench.median() * 1e3:7.1f} ms ±{bench.stdev() / bench.median():4.0%}"
              f"  {bench.median() / base:5.2f}x  {bench.median() / glibc:5.2f}x glibc")
    for name in MODES:
        shutil.rmtree(work / name, ignore_errors=True)


if __name__ == "__main__":
    main()
