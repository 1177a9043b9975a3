#!/usr/bin/env python3
"""Micro-benchmark of libkfence's malloc/free against glibc and a do-nothing interposer.

One command measures, side by side:

* unsampled/*: N rounds of malloc(32) + touch + free under plain glibc, under a
  do-nothing LD_PRELOAD interposer built here (bench/micro/noop_interposer.c),
  and under libkfence.so with its default options (KFENCE_OPTIONS unset) and
  with num_objects=256 and 16384;
* sampled/*: the same loop under KFENCE_OPTIONS=sample_rate=1 (every malloc is
  a guarded pool object, stack capture included), with the default pool and
  with num_objects=256, 1024, 4096 and 16384.

Each benchmark runs N0 + N iterations and has a twin "base/<name>" running only
N0: N0 is 0 for unsampled modes and num_objects for sampled ones, so the
summary's (t(N0 + N) - t(N0)) / N is the steady-state cost, net of process
start-up and of the first-use page fault of every pool slot.  Every command is
`env -u LD_PRELOAD -u KFENCE_OPTIONS [VAR=value...] loop N 32`, so pyperf's
environment filtering cannot change what is measured.

Shared virtual machines drift over minutes, and pyperf runs one benchmark to
completion before the next, so the loop benchmarks are run in several rounds
(each a complete pyperf run over every mode, in a rotated order) whose runs are
merged: a slow minute then lands on every mode alike.  Full mode is 5 rounds of
4 worker processes (pyperf's default 20 processes per benchmark in total).

    python bench/micro_bench.py            # full run (~6 minutes on 2 cores)
    python bench/micro_bench.py --quick    # rough figures in about a minute

Then, unless --skip-startup / --skip-cycle, two measurements of their own
(each also a command: bench/startup_bench.py, bench/cycle_bench.py):

* start-up: the exec of a trivial program under each mode, interleaved rounds
  paired with glibc (the preload's added milliseconds, and the ratio);
* the sampled cycle in-process at every pool size, with its breakdown step by
  step (and a perf profile of it when perf is installed).

The merged pyperf JSON goes to bench/results/micro.json (see --json), with the
machine, kernel, glibc, Python and kfence_py commit in its metadata
(machine.py), and is summarised by micro_summary.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cycle_bench
import machine
import pyperf
import startup_bench
from micro_summary import BASE_PREFIX, summarize

log = logging.getLogger("micro_bench")

HERE = Path(__file__).resolve().parent
SRC = HERE / "micro"
RESULTS = HERE / "results"

# Same flags as libkfence.so (setup.py), so the interposer differs only in what it does.
LIB_CFLAGS = [
    "-std=gnu11", "-O2", "-g", "-fPIC", "-fno-plt",
    "-fno-builtin-malloc", "-fno-builtin-calloc", "-fno-builtin-realloc", "-fno-builtin-free",
]
LIB_LDFLAGS = ["-shared", "-Wl,-z,now"]
# The driver: malloc/free must stay opaque calls the compiler cannot pair up and drop.
LOOP_CFLAGS = ["-std=gnu11", "-O2", "-g", "-fno-builtin-malloc", "-fno-builtin-free"]
WARN_CFLAGS = ["-Wall", "-Wextra", "-Werror"]


@dataclass(frozen=True)
class Plan:
    """How much to measure: iterations per loop and pyperf settings per phase."""

    unsampled_iterations: int
    sampled_iterations: int
    rounds: int
    # pyperf options of each loop round and of the single base phase.
    loop_pyperf: tuple[str, ...]
    base_pyperf: tuple[str, ...]


# Loop runs last 0.05-0.6 s: one command run per value (--loops 1), which also spares
# pyperf's calibration worker; the short base runs are left to pyperf's calibration.
_ONE = ("--loops", "1", "--warmups", "1")
FULL = Plan(10_000_000, 20_000, 5, ("-p", "4", *_ONE), ("-p", "4"))
QUICK = Plan(5_000_000, 10_000, 2, ("-p", "2", "-n", "2", *_ONE), ("-p", "3", "-n", "2"))

SAMPLED_NUM_OBJECTS = (256, 1024, 4096, 16384)
DEFAULT_NUM_OBJECTS = 255  # csrc/options.inc
UNSAMPLED_NUM_OBJECTS = (256, 16384)
# libkfence's exit status when it reported a bug (option exitcode, default 66).
KFENCE_EXITCODE = 66


@dataclass(frozen=True)
class Mode:
    """One configuration of the loop program."""

    name: str
    group: str  # "unsampled" or "sampled"
    preload: Path | None
    options: str | None  # KFENCE_OPTIONS; None leaves it unset
    base: int = 0  # N0: iterations of the base twin, left out of the per-iteration cost

    def env_args(self, env_bin: str) -> list[str]:
        args = [env_bin, "-u", "LD_PRELOAD", "-u", "KFENCE_OPTIONS"]
        if self.preload is not None:
            args.append(f"LD_PRELOAD={self.preload}")
        if self.options is not None:
            args.append(f"KFENCE_OPTIONS={self.options}")
        return args


@dataclass(frozen=True)
class Build:
    loop: Path
    noop: Path
    kfence: Path
    env_bin: str


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def run_cc(args: list[str]) -> None:
    cmd = [*compiler(), *args]
    log.info("%s", shlex.join(cmd))
    subprocess.run(cmd, check=True)


def build(build_dir: Path) -> None:
    """Compile the loop driver and the do-nothing interposer into build_dir."""
    build_dir.mkdir(parents=True, exist_ok=True)
    run_cc([*LOOP_CFLAGS, *WARN_CFLAGS, str(SRC / "loop.c"), "-o", str(build_dir / "loop")])
    run_cc([
        *LIB_CFLAGS, *WARN_CFLAGS, str(SRC / "noop_interposer.c"),
        *LIB_LDFLAGS, "-o", str(build_dir / "libnoop_interposer.so"),
    ])


def find_libkfence() -> Path:
    """Ask the installed package, from a neutral directory so the source tree cannot shadow it."""
    cli = shutil.which("kfence-py")
    if cli is None:
        raise SystemExit("kfence-py not on PATH: install the package or pass --lib")
    with tempfile.TemporaryDirectory() as neutral:
        out = subprocess.run(
            [cli, "lib-path"], cwd=neutral, check=True, capture_output=True, text=True
        ).stdout.strip()
    path = Path(out)
    if not path.is_file():
        raise SystemExit(f"kfence-py lib-path gave {out!r}, which is not a file")
    return path


def modes(b: Build) -> list[Mode]:
    out = [
        Mode("unsampled/glibc", "unsampled", None, None),
        Mode("unsampled/noop-interposer", "unsampled", b.noop, None),
        Mode("unsampled/kfence-default", "unsampled", b.kfence, None),
    ]
    out += [
        Mode(f"unsampled/kfence-num_objects={n}", "unsampled", b.kfence, f"num_objects={n}")
        for n in UNSAMPLED_NUM_OBJECTS
    ]
    out.append(Mode(
        "sampled/kfence-sample_rate=1", "sampled", b.kfence, "sample_rate=1",
        base=DEFAULT_NUM_OBJECTS,
    ))
    out += [
        Mode(
            f"sampled/kfence-num_objects={n}", "sampled", b.kfence,
            f"sample_rate=1:num_objects={n}", base=n,
        )
        for n in SAMPLED_NUM_OBJECTS
    ]
    return out


def command(
    b: Build, mode: Mode, iterations: int, size: int, check: str | None = None
) -> list[str]:
    cmd = [*mode.env_args(b.env_bin), str(b.loop), str(iterations), str(size)]
    if check is not None:
        cmd.append(check)
    return cmd


def sanity_check(b: Build, mode: Mode, size: int) -> None:
    """Make sure each mode measures what its name says, before spending minutes on it."""
    res = subprocess.run(command(b, mode, 1000, size, "which"), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{mode.name}: loop failed ({res.returncode}): {res.stderr.strip()}")
    if res.stderr.strip():
        log.warning("%s: stderr: %s", mode.name, res.stderr.strip())
    provider = Path(res.stdout.strip()).resolve()
    expected = mode.preload.resolve() if mode.preload else None
    if expected is not None and provider != expected:
        raise SystemExit(f"{mode.name}: malloc comes from {provider}, not {expected}")
    if expected is None and not provider.name.startswith("libc."):
        raise SystemExit(f"{mode.name}: malloc comes from {provider}, not glibc")
    if mode.group == "sampled":
        # Every malloc is guarded: a read after free must be reported.
        res = subprocess.run(command(b, mode, 1000, size, "uaf"), capture_output=True, text=True)
        if res.returncode != KFENCE_EXITCODE or "use-after-free" not in res.stderr:
            raise SystemExit(
                f"{mode.name}: use-after-free not reported (exit {res.returncode}); "
                "the mode is not sampling"
            )
    log.info("%s: malloc from %s: ok", mode.name, provider)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="rough figures: 2 short rounds, half the iterations")
    parser.add_argument("--lib", type=Path, default=None,
                        help="libkfence.so to measure (default: `kfence-py lib-path`)")
    parser.add_argument("--build-dir", type=Path, default=RESULTS / "build",
                        help="where the loop and the interposer are built")
    parser.add_argument("--json", type=Path, default=RESULTS / "micro.json",
                        help="merged pyperf JSON output, replaced if present")
    parser.add_argument("--size", type=int, default=32, help="allocation size in bytes")
    parser.add_argument("--unsampled-iterations", type=int, default=None)
    parser.add_argument("--sampled-iterations", type=int, default=None)
    parser.add_argument("--skip-startup", action="store_true",
                        help="leave out the start-up benchmark (startup_bench.py)")
    parser.add_argument("--skip-cycle", action="store_true",
                        help="leave out the sampled cycle's breakdown (cycle_bench.py)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="loop rounds to interleave (default: 5, or 2 with --quick)")
    # Internal: set by the driver when it starts one pyperf run of a phase.
    parser.add_argument("--phase", choices=("loop", "base"), help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)


def forward_arguments(cmd: list[str], args: argparse.Namespace) -> None:
    """Give pyperf's worker processes the same configuration."""
    cmd += ["--lib", str(args.lib), "--build-dir", str(args.build_dir), "--json", str(args.json)]
    cmd += ["--size", str(args.size)]
    cmd += ["--unsampled-iterations", str(args.unsampled_iterations)]
    cmd += ["--sampled-iterations", str(args.sampled_iterations)]
    cmd += ["--phase", args.phase, "--round", str(args.round)]


def round_json(final: Path, phase: str, rnd: int) -> Path:
    return final.with_name(f"{final.stem}.{phase}{rnd}.json")


def run_phase(args: argparse.Namespace, b: Build) -> int:
    """One pyperf run (or one of its workers) over every mode, for one phase."""
    runner = pyperf.Runner(add_cmdline_args=forward_arguments)
    add_arguments(runner.argparser)
    args = runner.parse_args()
    iterations = {"unsampled": args.unsampled_iterations, "sampled": args.sampled_iterations}
    all_modes = modes(b)
    shift = args.round % len(all_modes)
    benchmarks: list[pyperf.Benchmark] = []
    for mode in all_modes[shift:] + all_modes[:shift]:
        if args.phase == "loop":
            name, count = mode.name, mode.base + iterations[mode.group]
        else:
            name, count = BASE_PREFIX + mode.name, mode.base
        bench = runner.bench_command(name, command(b, mode, count, args.size))
        if bench is not None:
            bench.update_metadata({
                "loop_iterations": count,
                "loop_size": args.size,
                "kfence_options": mode.options if mode.options is not None else "(unset)",
                "ld_preload": str(mode.preload) if mode.preload else "(none)",
            })
            benchmarks.append(bench)
    if not args.worker:
        pyperf.BenchmarkSuite(benchmarks).dump(
            str(round_json(args.json, args.phase, args.round)), replace=True
        )
    return 0


def drive(args: argparse.Namespace, b: Build, plan: Plan) -> int:
    """Build, check, run every phase and round as its own pyperf run, merge, summarise."""
    snap = machine.snapshot(b.kfence)
    log.info("libkfence.so: %s (commit %s)", b.kfence, snap.short_commit())
    log.info("iterations: unsampled %d, sampled %d; size %d; %d loop rounds",
             args.unsampled_iterations, args.sampled_iterations, args.size, args.rounds)
    build(args.build_dir)
    all_modes = modes(b)
    for mode in all_modes:
        sanity_check(b, mode, args.size)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    common = [
        sys.executable, str(Path(__file__).resolve()), "--quiet",
        "--lib", str(args.lib), "--build-dir", str(args.build_dir), "--json", str(args.json),
        "--size", str(args.size),
        "--unsampled-iterations", str(args.unsampled_iterations),
        "--sampled-iterations", str(args.sampled_iterations),
    ]
    runs = [("base", 0, plan.base_pyperf)]
    runs += [("loop", r, plan.loop_pyperf) for r in range(args.rounds)]
    parts = []
    for phase, rnd, pyperf_args in runs:
        log.info("pyperf run: phase %s, round %d (%s)", phase, rnd, " ".join(pyperf_args))
        out = round_json(args.json, phase, rnd)
        out.unlink(missing_ok=True)
        subprocess.run(
            [*common, "--phase", phase, "--round", str(rnd), *pyperf_args], check=True
        )
        parts.append(out)
    merged = merge_rounds(parts)

    order = [m.name for m in all_modes] + [BASE_PREFIX + m.name for m in all_modes]
    machine.stamp_benchmarks(merged.values(), snap)
    pyperf.BenchmarkSuite([merged[n] for n in order]).dump(str(args.json), replace=True)
    log.info("pyperf JSON written to %s", args.json)
    print()
    print(f"Command: {shlex.join(['python', *sys.argv])}")
    print(summarize(args.json))
    quick = plan is QUICK
    if not args.skip_startup:
        print()
        print("Start-up (bench/startup_bench.py):")
        print(startup_bench.run(b.kfence, args.build_dir, 100 if quick else 300,
                                args.json.with_name("startup.json")))
    if not args.skip_cycle:
        print()
        print("Sampled cycle and its steps (bench/cycle_bench.py):")
        print(cycle_bench.run(b.kfence, args.build_dir, 2 if quick else 5,
                              2000 if quick else 5000, 1000 if quick else 3000,
                              [DEFAULT_NUM_OBJECTS, *SAMPLED_NUM_OBJECTS],
                              args.json.with_name("cycle.json")))
    return 0


def merge_rounds(parts: list[Path]) -> dict[str, pyperf.Benchmark]:
    """One benchmark per name with the runs of every round file; the files are removed."""
    merged: dict[str, pyperf.Benchmark] = {}
    for part in parts:
        if not part.exists():
            continue
        for bench in pyperf.BenchmarkSuite.load(str(part)).get_benchmarks():
            if bench.get_name() in merged:
                merged[bench.get_name()].add_runs(bench)
            else:
                merged[bench.get_name()] = bench
        part.unlink()
    return merged


def main() -> int:
    # The driver's own options; pyperf's (in phase runs) are left for pyperf to parse.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args, rest = parser.parse_known_args()
    phase_run = args.phase is not None
    if rest and not phase_run:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING if phase_run else logging.INFO,
                        format="%(name)s: %(message)s")

    plan = QUICK if args.quick else FULL
    if args.unsampled_iterations is None:
        args.unsampled_iterations = plan.unsampled_iterations
    if args.sampled_iterations is None:
        args.sampled_iterations = plan.sampled_iterations
    if args.rounds is None:
        args.rounds = plan.rounds
    args.build_dir = args.build_dir.resolve()
    args.json = args.json.resolve()
    args.lib = (args.lib or find_libkfence()).resolve()

    b = Build(
        loop=args.build_dir / "loop",
        noop=args.build_dir / "libnoop_interposer.so",
        kfence=args.lib,
        env_bin=shutil.which("env") or "/usr/bin/env",
    )
    return run_phase(args, b) if phase_run else drive(args, b, plan)


if __name__ == "__main__":
    sys.exit(main())
