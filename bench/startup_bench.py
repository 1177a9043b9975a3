#!/usr/bin/env python3
"""What the preload adds to the exec of a trivial C program, side by side with glibc.

One command runs `true` (bench/micro/true.c: `int main(void) { return 0; }`,
which never allocates) in rounds; each round runs it once in every mode, in a
rotated order, so a slow second of a shared machine lands on every mode alike:

    glibc             no preload
    noop-interposer   a do-nothing LD_PRELOAD malloc (bench/micro/noop_interposer.c):
                      what any preload costs
    kfence-disabled   libkfence.so with enabled=0 (loaded, options read, nothing started)
    kfence-default    libkfence.so, KFENCE_OPTIONS unset

Each run is a posix_spawn() and a wait4(): its wall time (spawn to reaped) and
its CPU time (the child's user + system time from wait4, which a busy machine's
waiting for a CPU does not inflate).  The figure is the median, over the rounds,
of the difference with the glibc run of the same round, with a bootstrap 95%
interval; the issue's bar is 0.2 ms added (median of >= 30 interleaved runs).

    python bench/startup_bench.py [--rounds 300] [--lib path/to/libkfence.so]

Raw values go to bench/results/startup.json (see --json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("startup_bench")

HERE = Path(__file__).resolve().parent
SRC = HERE / "micro"
RESULTS = HERE / "results"

TARGET_ADDED_MS = 0.2
MIN_ROUNDS = 30
GLIBC = "glibc"


@dataclass(frozen=True)
class Mode:
    name: str
    preload: Path | None
    options: str | None  # KFENCE_OPTIONS; None leaves it unset


@dataclass
class Samples:
    """One mode's runs, in round order: wall and CPU time in microseconds."""

    wall_us: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def find_libkfence() -> Path:
    """`kfence-py lib-path`, asked from a neutral directory so a source tree cannot shadow it."""
    cli = shutil.which("kfence-py")
    if cli is None:
        raise SystemExit("kfence-py not on PATH: install the package or pass --lib")
    with tempfile.TemporaryDirectory() as neutral:
        out = subprocess.run([cli, "lib-path"], cwd=neutral, check=True,
                             capture_output=True, text=True).stdout.strip()
    return Path(out)


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def build(build_dir: Path) -> tuple[Path, Path]:
    """The trivial program and the do-nothing interposer, compiled into build_dir."""
    build_dir.mkdir(parents=True, exist_ok=True)
    true_exe = build_dir / "true"
    noop = build_dir / "libnoop_interposer.so"
    cmds = [
        [*compiler(), "-O2", "-Wall", "-Werror", str(SRC / "true.c"), "-o", str(true_exe)],
        [*compiler(), "-O2", "-fPIC", "-shared", "-Wall", "-Werror", "-fno-builtin-malloc",
         "-fno-builtin-free", str(SRC / "noop_interposer.c"), "-o", str(noop)],
    ]
    for cmd in cmds:
        log.info("%s", shlex.join(cmd))
        subprocess.run(cmd, check=True)
    return true_exe, noop


def modes(lib: Path, noop: Path) -> list[Mode]:
    return [
        Mode(GLIBC, None, None),
        Mode("noop-interposer", noop, None),
        Mode("kfence-disabled", lib, "enabled=0"),
        Mode("kfence-default", lib, None),
    ]


def environment(mode: Mode) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    if mode.preload is not None:
        env["LD_PRELOAD"] = str(mode.preload)
    if mode.options is not None:
        env["KFENCE_OPTIONS"] = mode.options
    return env


def run_once(exe: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU microseconds of one exec of exe, which must exit 0."""
    start = time.perf_counter_ns()
    pid = os.posix_spawn(str(exe), [str(exe)], env)
    _, status, usage = os.wait4(pid, 0)
    wall = (time.perf_counter_ns() - start) / 1e3
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{exe} exited with status {status} under {env.get('LD_PRELOAD')}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1e6


def measure(exe: Path, all_modes: list[Mode], rounds: int, warmup: int = 5) -> dict[str, Samples]:
    envs = [(m.name, environment(m)) for m in all_modes]
    for _ in range(warmup):
        for _, env in envs:
            run_once(exe, env)
    samples = {name: Samples() for name, _ in envs}
    for r in range(rounds):
        shift = r % len(envs)
        for name, env in envs[shift:] + envs[:shift]:
            wall, cpu = run_once(exe, env)
            samples[name].wall_us.append(wall)
            samples[name].cpu_us.append(cpu)
    return samples


def paired(values: list[float], base: list[float]) -> list[float]:
    return [v - b for v, b in zip(values, base)]


def median_ci(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the median."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values)))
                  for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def summarize(samples: dict[str, Samples], load: tuple[float, float]) -> str:
    base = samples[GLIBC]
    rounds = len(base.wall_us)
    header = (f"{'mode':18} {'wall median':>12} {'added (95% CI)':>24} {'x glibc':>8}   "
              f"{'CPU median':>11} {'added (95% CI)':>22}")
    lines = [header, "-" * len(header)]
    for name, s in samples.items():
        wall, cpu = statistics.median(s.wall_us), statistics.median(s.cpu_us)
        dw, dc = paired(s.wall_us, base.wall_us), paired(s.cpu_us, base.cpu_us)
        (wlo, whi), (clo, chi) = median_ci(dw), median_ci(dc)
        lines.append(
            f"{name:18} {wall:9.0f} us {statistics.median(dw):+8.0f} us ({wlo:+5.0f}..{whi:+5.0f}) "
            f"{wall / statistics.median(base.wall_us):8.3f}   {cpu:8.0f} us "
            f"{statistics.median(dc):+7.0f} us ({clo:+5.0f}..{chi:+5.0f})")
    lines.append("")
    lines.append(f"{rounds} interleaved rounds; added = median over rounds of (mode - glibc) "
                 f"in the same round; load average {load[0]:.2f} before, {load[1]:.2f} after.")
    kf = samples["kfence-default"]
    added_ms = statistics.median(paired(kf.wall_us, base.wall_us)) / 1e3
    lo, hi = median_ci(paired(kf.wall_us, base.wall_us))
    tag = "MET " if added_ms <= TARGET_ADDED_MS else "MISS"
    lines.append(f"[{tag}] start-up added by the preload (kfence-default - glibc, wall): "
                 f"{added_ms:.3f} ms (95% CI {lo / 1e3:.3f}-{hi / 1e3:.3f}), "
                 f"target <= {TARGET_ADDED_MS} ms")
    return "\n".join(lines)


def run(lib: Path, build_dir: Path, rounds: int, json_path: Path | None) -> str:
    """Build, measure and summarise; the raw values go to json_path."""
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"--rounds must be at least {MIN_ROUNDS}")
    exe, noop = build(build_dir)
    all_modes = modes(lib.resolve(), noop)
    before = os.getloadavg()[0]
    samples = measure(exe, all_modes, rounds)
    after = os.getloadavg()[0]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "program": str(exe), "lib": str(lib), "rounds": rounds,
            "loadavg": [before, after],
            "modes": {m.name: {"ld_preload": str(m.preload) if m.preload else None,
                               "kfence_options": m.options, **asdict(samples[m.name])}
                      for m in all_modes},
        }, indent=1))
        log.info("raw values written to %s", json_path)
    return summarize(samples, (before, after))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lib", type=Path, default=None,
                        help="libkfence.so to measure (default: `kfence-py lib-path`)")
    parser.add_argument("--rounds", type=int, default=300,
                        help=f"interleaved rounds, at least {MIN_ROUNDS} (default: 300)")
    parser.add_argument("--build-dir", type=Path, default=RESULTS / "build")
    parser.add_argument("--json", type=Path, default=RESULTS / "startup.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    lib = args.lib or find_libkfence()
    print(f"Command: {shlex.join(['python', *sys.argv])}")
    print(run(lib, args.build_dir, args.rounds, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
