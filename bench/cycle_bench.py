#!/usr/bin/env python3
"""The sampled cycle (malloc + free of a guarded object) and what it is made of.

Two measurements, both with bench/micro/cycle.c:

* the cycle: `cycle loop` under LD_PRELOAD=libkfence.so with
  KFENCE_OPTIONS=sample_rate=1:num_objects=N, for every pool size N, timed
  in-process after every slot's first use (N warm-up cycles); rounds
  interleave the pool sizes, so a slow moment of a shared machine lands on
  all of them.  Wall clock per cycle, and the thread's CPU time per cycle
  (which waiting for a CPU on a busy machine does not inflate).
* its steps: `cycle steps` without the preload does libkfence's operations one
  at a time on a pool laid out as libkfence lays it out (a mapping per used
  data page between PROT_NONE guards, slots reused oldest-freed first):
  freelist lock, mprotect, canary fill and check of the page, the clock
  reads, the two stack captures (libgcc's _Unwind_Backtrace from as deep as
  libkfence's frames are), and, for comparison, the MADV_FREE the free no
  longer does.  The median of each step over the cycles of a round.

With perf installed, a profile of the real cycle (software cpu-clock samples)
splits its time between the kernel, the unwinder and libkfence.

The cycle's targets: at most 5 us at 255 slots, and flat (max/min at most 1.1x)
from 256 to 16384 slots.  What the steps do not account for ("the rest") is
the slot's metadata, the counters, the coverage filter and the module table.

    python bench/cycle_bench.py [--lib path/to/libkfence.so] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("cycle_bench")

HERE = Path(__file__).resolve().parent
SRC = HERE / "micro"
RESULTS = HERE / "results"

TARGET_CYCLE_US = 5.0
TARGET_FLAT = 1.10
DEFAULT_SIZES = (255, 256, 1024, 4096, 16384)
STEP_SLOTS = (256, 16384)
# Frames between _Unwind_Backtrace and main in libkfence's captures in `cycle loop`:
# kf_capture_stack, kf_guarded_alloc, kf_sample_alloc, malloc (the free: kf_capture_stack,
# kf_pool_free, kf_free_slow, free); `cycle steps` recurses this deep below its own frame.
CAPTURE_FRAMES = 3


@dataclass
class CycleRuns:
    """Per-cycle times of every value, and the fastest value of each round."""

    wall_ns: list[float] = field(default_factory=list)
    cpu_ns: list[float] = field(default_factory=list)
    round_cpu_min: list[float] = field(default_factory=list)


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def find_libkfence() -> Path:
    cli = shutil.which("kfence-py")
    if cli is None:
        raise SystemExit("kfence-py not on PATH: install the package or pass --lib")
    with tempfile.TemporaryDirectory() as neutral:
        out = subprocess.run([cli, "lib-path"], cwd=neutral, check=True,
                             capture_output=True, text=True).stdout.strip()
    return Path(out)


def build(build_dir: Path) -> Path:
    build_dir.mkdir(parents=True, exist_ok=True)
    exe = build_dir / "cycle"
    cmd = [*compiler(), "-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
           "-fno-builtin-malloc", "-fno-builtin-free", str(SRC / "cycle.c"), "-o", str(exe),
           "-lpthread", "-ldl"]
    log.info("%s", shlex.join(cmd))
    subprocess.run(cmd, check=True)
    return exe


def run_loop(exe: Path, lib: Path, slots: int, cycles: int, reps: int) -> CycleRuns:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(lib), KFENCE_OPTIONS=f"sample_rate=1:num_objects={slots}")
    proc = subprocess.run([str(exe), "loop", str(slots), str(cycles), str(reps), "32"],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "guarded=1" not in proc.stdout:
        raise SystemExit(f"cycle loop with {slots} slots: exit {proc.returncode}, not sampling? "
                         f"{proc.stdout.strip()} {proc.stderr.strip()}")
    runs = CycleRuns()
    for line in proc.stdout.splitlines():
        if line.startswith("round "):
            values = dict(kv.split("=") for kv in line.split()[1:])
            runs.wall_ns.append(float(values["wall_ns"]))
            runs.cpu_ns.append(float(values["cpu_ns"]))
    return runs


def run_steps(exe: Path, slots: int, cycles: int, reps: int) -> dict[str, list[float]]:
    proc = subprocess.run([str(exe), "steps", str(slots), str(cycles), str(reps),
                           str(CAPTURE_FRAMES)], capture_output=True, text=True, check=True)
    steps: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("step "):
            name, rest = line[len("step "):].split(" ns=")
            steps.setdefault(name, []).append(float(rest.split()[0]))
    return steps


def perf_profile(exe: Path, lib: Path, slots: int, cycles: int,
                 out: Path) -> list[tuple[str, float]]:
    """Where the cycle's time goes, by module (perf record, software cpu-clock), as shares."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(lib), KFENCE_OPTIONS=f"sample_rate=1:num_objects={slots}")
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-o", str(out),
                    "--", str(exe), "loop", str(slots), str(cycles), "1", "32"],
                   env=env, capture_output=True, check=True)
    report = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "--no-children",
                             "--sort", "dso,sym", "-g", "none"],
                            capture_output=True, text=True, check=True).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        parts = line.split()
        if not parts or not parts[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        share, dso, sym = float(parts[0][:-1]), parts[1], " ".join(parts[3:])
        group = profile_group(dso, sym, lib.name)
        shares[group] = shares.get(group, 0.0) + share
    return sorted(shares.items(), key=lambda kv: -kv[1])


def profile_group(dso: str, sym: str, lib_name: str) -> str:
    """The step a sample belongs to, from its module and function."""
    if dso == "[kernel.kallsyms]":
        return "kernel (mprotect; perf's own bookkeeping of it)"
    if dso.startswith("libgcc_s") or sym in ("_dl_find_object", "__strlen_avx2", "__strlen_sse2"):
        return "stack captures (libgcc's unwinder)"
    if dso == lib_name:
        if sym in ("kf_first_bad_canary", "kf_check_canary"):
            return "canary check"
        if sym == "kf_guarded_alloc":
            return "canary fill and the slot (kf_guarded_alloc)"
        return "libkfence, the rest (gate, metadata, module table)"
    if dso.startswith("libc.so"):
        return "libc (system call wrappers, clock)"
    return "other"


def measure(exe: Path, lib: Path, sizes: list[int], rounds: int, cycles: int,
            step_cycles: int) -> tuple[dict[int, CycleRuns], dict[int, dict[str, list[float]]]]:
    loops = {n: CycleRuns() for n in sizes}
    steps: dict[int, dict[str, list[float]]] = {n: {} for n in STEP_SLOTS}
    for r in range(rounds):
        shift = r % len(sizes)
        for n in sizes[shift:] + sizes[:shift]:
            got = run_loop(exe, lib, n, cycles, 3)
            loops[n].wall_ns += got.wall_ns
            loops[n].cpu_ns += got.cpu_ns
            loops[n].round_cpu_min.append(min(got.cpu_ns))
        for n in STEP_SLOTS:
            for name, values in run_steps(exe, n, step_cycles, 1).items():
                steps[n].setdefault(name, []).extend(values)
    return loops, steps


def summarize(loops: dict[int, CycleRuns], steps: dict[int, dict[str, list[float]]],
              load: tuple[float, float], profile: list[tuple[str, float]] | None = None) -> str:
    med = statistics.median
    lines = [f"{'slots':>6} {'wall median':>12} {'wall min':>10} {'CPU median':>11} "
             f"{'CPU min':>9}  (us per cycle)"]
    for n, runs in loops.items():
        lines.append(f"{n:6d} {med(runs.wall_ns) / 1e3:12.2f} {min(runs.wall_ns) / 1e3:10.2f} "
                     f"{med(runs.cpu_ns) / 1e3:11.2f} {min(runs.cpu_ns) / 1e3:9.2f}")
    lines.append("")
    a, b = STEP_SLOTS
    lines.append(f"{'step (median ns)':26} {a:>8} {b:>8} {'x':>6}")
    totals = {a: 0.0, b: 0.0}
    for name in steps[a]:
        va, vb = med(steps[a][name]), med(steps[b][name])
        removed = "removed" in name
        if not removed:
            totals[a] += va
            totals[b] += vb
        lines.append(f"{name:26} {va:8.0f} {vb:8.0f} {vb / va if va else 0:6.2f}")
    lines.append(f"{'sum of the steps':26} {totals[a]:8.0f} {totals[b]:8.0f} "
                 f"{totals[b] / totals[a]:6.2f}")
    for n, total in totals.items():
        near = min(loops, key=lambda k: abs(k - n))
        cpu = med(loops[near].cpu_ns)
        lines.append(f"  the rest at {n} slots (cycle CPU median - sum): {cpu - total:+.0f} ns")
    if profile:
        smallest = min(loops)
        cpu = med(loops[smallest].cpu_ns)
        lines.append("")
        lines.append(f"perf profile of the cycle at {smallest} slots (share; times the CPU median)")
        for group, share in profile:
            lines.append(f"  {share:5.1f}%  {share / 100 * cpu / 1e3:5.2f} us  {group}")
    lines.append("")
    lines.append(f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    smallest = min(loops)
    at = med(loops[smallest].wall_ns) / 1e3
    lines.append(f"[{'MET ' if at <= TARGET_CYCLE_US else 'MISS'}] sampled cycle at {smallest} "
                 f"slots: {at:.2f} us wall median ({med(loops[smallest].cpu_ns) / 1e3:.2f} us "
                 f"CPU), target <= {TARGET_CYCLE_US:.1f} us")
    flat = sorted(n for n in loops if n >= 256)
    if len(flat) >= 2:
        # Each size against the smallest in the same round (the fastest of its three values),
        # so that a slow minute of the machine cancels out; the median over the rounds.
        ratios = {n: med(x / y for x, y in zip(loops[n].round_cpu_min,
                                               loops[flat[0]].round_cpu_min))
                  for n in flat}
        spread = max(ratios.values()) / min(ratios.values())
        series = ", ".join(f"{n}: {r:.3f}" for n, r in ratios.items())
        lines.append(f"[{'MET ' if spread <= TARGET_FLAT else 'MISS'}] cycle vs num_objects "
                     f"(CPU, x {flat[0]} slots in the same round: {series}): "
                     f"max/min = {spread:.3f}x, target <= {TARGET_FLAT:.2f}x")
    return "\n".join(lines)


def run(lib: Path, build_dir: Path, rounds: int, cycles: int, step_cycles: int,
        sizes: list[int], json_path: Path | None) -> str:
    exe = build(build_dir)
    before = os.getloadavg()[0]
    loops, steps = measure(exe, lib.resolve(), sizes, rounds, cycles, step_cycles)
    profile = None
    if shutil.which("perf"):
        try:
            profile = perf_profile(exe, lib.resolve(), min(sizes), cycles * 4,
                                   build_dir / "cycle.perf.data")
        except subprocess.CalledProcessError as exc:
            log.warning("no perf profile: %s", (exc.stderr or b"").decode().strip())
    else:
        log.info("perf is not installed: no profile of the cycle")
    after = os.getloadavg()[0]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "lib": str(lib), "rounds": rounds, "cycles": cycles, "loadavg": [before, after],
            "loop": {str(n): asdict(r) for n, r in loops.items()},
            "steps": {str(n): s for n, s in steps.items()},
            "perf_profile": profile,
        }, indent=1))
        log.info("raw values written to %s", json_path)
    return summarize(loops, steps, (before, after), profile)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lib", type=Path, default=None,
                        help="libkfence.so to measure (default: `kfence-py lib-path`)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--cycles", type=int, default=5000,
                        help="timed cycles per value (default: 5000)")
    parser.add_argument("--step-cycles", type=int, default=3000,
                        help="cycles per round of the step breakdown (default: 3000)")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="num_objects values, comma-separated")
    parser.add_argument("--build-dir", type=Path, default=RESULTS / "build")
    parser.add_argument("--json", type=Path, default=RESULTS / "cycle.json")


def sizes_of(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    lib = args.lib or find_libkfence()
    print(f"Command: {shlex.join(['python', *sys.argv])}")
    print(run(lib, args.build_dir, args.rounds, args.cycles, args.step_cycles,
              sizes_of(args.sizes), args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
