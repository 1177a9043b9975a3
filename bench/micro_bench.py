#!/usr/bin/env python3
"""Micro-benchmark of libkfence's malloc/free against glibc and a do-nothing interposer.

One pyperf run measures, side by side:

* unsampled/*: N rounds of malloc(32) + touch + free under plain glibc, under a
  do-nothing LD_PRELOAD interposer built here (bench/micro/noop_interposer.c),
  and under libkfence.so with its default options (KFENCE_OPTIONS unset) and
  with num_objects=256 and 16384;
* sampled/*: the same loop under KFENCE_OPTIONS=sample_rate=1 (every malloc is
  a guarded pool object, stack capture included), with the default pool and
  with num_objects=256, 1024, 4096 and 16384.

Each benchmark has a twin "startup/<name>" running the same command with 0
iterations, so the summary can report the loop cost net of process start-up.
Every command is `env -u LD_PRELOAD -u KFENCE_OPTIONS [VAR=value...] loop N 32`,
so pyperf's environment filtering cannot change what is measured.

    python bench/micro_bench.py            # full run (~5 minutes on 2 cores)
    python bench/micro_bench.py --quick    # rough figures in about a minute

The pyperf JSON is written to bench/results/micro.json (override with --json)
and summarised by micro_summary.py.  All pyperf options (-p, -n, -v, ...) work.
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

import pyperf
from micro_summary import summarize

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

FULL_ITERATIONS = {"unsampled": 10_000_000, "sampled": 20_000}
QUICK_ITERATIONS = {"unsampled": 5_000_000, "sampled": 10_000}
# Quick mode: pyperf processes and values per process (full mode: pyperf's defaults, 20 x 3).
QUICK_PROCESSES, QUICK_VALUES = 4, 2

SAMPLED_NUM_OBJECTS = (256, 1024, 4096, 16384)
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
    out.append(Mode("sampled/kfence-sample_rate=1", "sampled", b.kfence, "sample_rate=1"))
    out += [
        Mode(
            f"sampled/kfence-num_objects={n}", "sampled", b.kfence,
            f"sample_rate=1:num_objects={n}",
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
                        help=f"rough run: {QUICK_PROCESSES} processes x {QUICK_VALUES} values "
                             "and half the iterations")
    parser.add_argument("--lib", type=Path, default=None,
                        help="libkfence.so to measure (default: `kfence-py lib-path`)")
    parser.add_argument("--build-dir", type=Path, default=RESULTS / "build",
                        help="where the loop and the interposer are built")
    parser.add_argument("--json", type=Path, default=RESULTS / "micro.json",
                        help="pyperf JSON output, replaced if present")
    parser.add_argument("--size", type=int, default=32, help="allocation size in bytes")
    parser.add_argument("--unsampled-iterations", type=int, default=None)
    parser.add_argument("--sampled-iterations", type=int, default=None)
    parser.add_argument("--no-build", action="store_true",
                        help="reuse the binaries in --build-dir (workers always do)")


def forward_arguments(cmd: list[str], args: argparse.Namespace) -> None:
    """Give pyperf's worker processes the same configuration (they rebuild nothing)."""
    if args.quick:
        cmd.append("--quick")
    cmd += ["--lib", str(args.lib), "--build-dir", str(args.build_dir), "--json", str(args.json)]
    cmd += ["--size", str(args.size)]
    cmd += ["--unsampled-iterations", str(args.unsampled_iterations)]
    cmd += ["--sampled-iterations", str(args.sampled_iterations)]


def main() -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    quick = pre.parse_known_args()[0].quick

    runner = pyperf.Runner(
        processes=QUICK_PROCESSES if quick else None,
        values=QUICK_VALUES if quick else None,
        add_cmdline_args=forward_arguments,
    )
    runner.argparser.description = __doc__.splitlines()[0]
    add_arguments(runner.argparser)
    args = runner.parse_args()
    master = not args.worker

    logging.basicConfig(level=logging.INFO if master else logging.WARNING,
                        format="%(name)s: %(message)s")

    iterations = dict(QUICK_ITERATIONS if args.quick else FULL_ITERATIONS)
    if args.unsampled_iterations is None:
        args.unsampled_iterations = iterations["unsampled"]
    if args.sampled_iterations is None:
        args.sampled_iterations = iterations["sampled"]
    iterations = {"unsampled": args.unsampled_iterations, "sampled": args.sampled_iterations}
    args.build_dir = args.build_dir.resolve()
    args.json = args.json.resolve()
    if args.lib is None:
        args.lib = find_libkfence()
    args.lib = args.lib.resolve()

    env_bin = shutil.which("env") or "/usr/bin/env"
    b = Build(
        loop=args.build_dir / "loop",
        noop=args.build_dir / "libnoop_interposer.so",
        kfence=args.lib,
        env_bin=env_bin,
    )
    all_modes = modes(b)

    if master:
        log.info("libkfence.so: %s", b.kfence)
        log.info("iterations: %s, size %d", iterations, args.size)
        if not args.no_build:
            build(args.build_dir)
        for mode in all_modes:
            sanity_check(b, mode, args.size)

    benchmarks: list[pyperf.Benchmark] = []
    for mode in all_modes:
        n = iterations[mode.group]
        for name, count in ((mode.name, n), ("startup/" + mode.name, 0)):
            bench = runner.bench_command(name, command(b, mode, count, args.size))
            if bench is not None:
                bench.update_metadata({
                    "loop_iterations": count,
                    "loop_size": args.size,
                    "kfence_options": mode.options if mode.options is not None else "(unset)",
                    "ld_preload": str(mode.preload) if mode.preload else "(none)",
                })
                benchmarks.append(bench)

    if not master:
        return 0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    pyperf.BenchmarkSuite(benchmarks).dump(str(args.json), replace=True)
    log.info("pyperf JSON written to %s", args.json)
    print()
    print(f"Command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(summarize(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
