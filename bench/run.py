#!/usr/bin/env python3
"""Overhead of kfence_py side by side with glibc and the peer tools, with pyperf.

One command runs everything in one session on this machine:

* workloads: micro C programs (bench/micro: malloc(32)+free, mixed sizes,
  realloc growth chains, two threads with cross-thread frees, a 100k-object
  heap with churn, the 1/2-thread scale pair) and real programs (sqlite3,
  gcc -O2 -c, g++ -O1 -c, perl, jq from Debian; python3 on a json/dict/re
  script, also with PYTHONMALLOC=malloc) on inputs made by gen_inputs.py;
* modes: glibc, the do-nothing interposer, libkfence.so at its default, at
  sample_interval 1/10/100 ms and sample_rate 5000/100/1, Scudo with GWP-ASan
  off / at rate 5000 / at rate 1, Electric Fence, DUMA, Valgrind memcheck (one
  workload);
* the Python API (py_bench.py): kfence_py.alloc+free against a 4 KiB
  mmap+close and the system calls it makes, Python workloads with and without
  python_allocator=True;
* with --micro (default without --quick): micro_bench.py's per-call costs and
  num_objects scale.

Every (workload, mode) pair is first run once outside pyperf (the preflight):
it must exit 0 within the timeout, and that run gives the peak RSS (wait4's
ru_maxrss) and, for kfence modes, the sampled allocations (the state file
written with state_dir=, read with kfence_py.state.StateView).  Pairs that
crashed, timed out or whose tool is not installed are shown as such in the
table.  The rest are timed with pyperf's Runner.bench_command in interleaved
rounds (each a pyperf run over every pair, several values per pair), then the
pairs slower than SLOW_RATIO x glibc in one run of their own.

    sh bench/setup.sh                 # peers and workload programs, from Debian
    python bench/run.py --quick       # about 15 minutes on 2 cores
    python bench/run.py               # everything

Results go to bench/results/: programs.json and python_api.json (pyperf, every
raw value, the machine and the kfence_py commit in their metadata),
preflight.json, summary.md and overhead.png (report.py re-renders the last two
from the JSON files).  bench/README.md says what each part is and how to read it.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import machine
import pyperf
from gen_inputs import generate
from micro_bench import (
    LOOP_CFLAGS,
    WARN_CFLAGS,
    build,
    find_libkfence,
    merge_rounds,
    run_cc,
)
from report import ROUND_KEY, SLOW_RATIO, Outcome, write_report

log = logging.getLogger("run")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KFENCE_EXITCODE = 66  # libkfence's exit status after a report (option exitcode)


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved pyperf runs over the pairs
    pyperf_values: tuple[str, ...]  # pyperf options of each round
    slow_values: tuple[str, ...]  # pyperf options of the one run of the slow pairs
    max_ratio: float  # default --max-ratio
    floor_s: float  # no run is stopped before this


# Several values per round: with one, a cell's median rests on as many values as there
# are rounds, and its 95% interval (noise.py) is wider than the effects it shows.
QUICK = Plan(3, ("-p", "1", "-n", "3"), ("-p", "1", "-n", "3"), 6.0, 2.0)
FULL = Plan(5, ("-p", "1", "-n", "3"), ("-p", "1", "-n", "5"), 30.0, 5.0)


# === Workloads and modes ===


@dataclass(frozen=True)
class Workload:
    name: str
    argv: tuple[str, ...]
    kind: str  # "micro", "real" or "scale"
    quick: bool = True
    env: tuple[tuple[str, str], ...] = ()
    # Modes run on this workload; empty: every mode except Valgrind.
    only_modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str  # "base", "kfence" or "peer"
    preload: str | None = None  # key into Tools.preloads
    env: tuple[tuple[str, str], ...] = ()
    quick: bool = True
    wrapper: tuple[str, ...] = ()  # Valgrind
    interval_ms: float | None = None  # for the plot: kfence's time gate
    kfence_options: str | None = None


CORE_MODES = ("glibc", "interposer", "kfence-default", "kfence-sample_rate=1")


def all_modes() -> list[Mode]:
    def kf(name: str, options: str | None, quick: bool, interval: float | None = None) -> Mode:
        env = (("KFENCE_OPTIONS", options),) if options else ()
        return Mode(name, "kfence", "kfence", env, quick, interval_ms=interval,
                    kfence_options=options)

    def scudo(name: str, options: str, quick: bool) -> Mode:
        return Mode(name, "peer", "scudo", (("SCUDO_OPTIONS", options),), quick)

    return [
        Mode("glibc", "base"),
        Mode("interposer", "base", "noop"),
        kf("kfence-default", None, True, 10.0),
        kf("kfence-sample_interval=1", "sample_interval=1", True, 1.0),
        kf("kfence-sample_interval=10", "sample_interval=10", False, 10.0),
        kf("kfence-sample_interval=100", "sample_interval=100", True, 100.0),
        kf("kfence-sample_rate=5000", "sample_rate=5000", False),
        kf("kfence-sample_rate=100", "sample_rate=100", True),
        kf("kfence-sample_rate=1", "sample_rate=1", True),
        scudo("scudo", "GWP_ASAN_Enabled=false", True),
        scudo("scudo+gwp-asan", "GWP_ASAN_Enabled=true:GWP_ASAN_SampleRate=5000", True),
        scudo("scudo+gwp-asan-rate=1", "GWP_ASAN_Enabled=true:GWP_ASAN_SampleRate=1", False),
        # Electric Fence aborts on malloc(0) unless told it is fine; real programs do it.
        Mode("electric-fence", "peer", "efence", (("EF_ALLOW_MALLOC_0", "1"),)),
        Mode("duma", "peer", "duma", (("DUMA_DISABLE_BANNER", "1"),)),
        Mode("valgrind", "peer", wrapper=("valgrind", "--tool=memcheck", "-q",
                                          "--error-exitcode=99")),
    ]


def all_workloads(bins: dict[str, Path], inputs: dict[str, Path], python: str) -> list[Workload]:
    loop, wl = str(bins["loop"]), str(bins["workloads"])
    scripts = HERE / "workloads"
    gcc, gxx = shutil.which("gcc") or "gcc", shutil.which("g++") or "g++"
    scale_modes = CORE_MODES
    return [
        Workload("malloc32", (loop, "40000000", "32"), "micro"),
        Workload("mixed", (wl, "mixed", "5000000"), "micro"),
        Workload("realloc", (wl, "realloc", "2000000"), "micro", quick=False),
        Workload("threads-cross", (wl, "threads", "5000000", "2", "cross"), "micro"),
        Workload("heap100k", (wl, "heap", "5000000"), "micro", quick=False),
        Workload("threads1", (wl, "threads", "20000000", "1", "local"), "scale",
                 only_modes=scale_modes),
        Workload("threads2", (wl, "threads", "20000000", "2", "local"), "scale",
                 only_modes=scale_modes),
        Workload("python-json", (python, str(scripts / "pyjson.py"), "15"), "real"),
        Workload("python-malloc", (python, str(scripts / "pyjson.py"), "12"), "real",
                 env=(("PYTHONMALLOC", "malloc"),)),
        Workload("sqlite3", ("/bin/sh", "-c", 'exec sqlite3 :memory: < "$0"',
                             str(inputs["sql"])), "real"),
        Workload("gcc", (gcc, "-O2", "-c", str(inputs["c"]), "-o", "/dev/null"), "real"),
        Workload("g++", (gxx, "-O1", "-c", str(inputs["cpp"]), "-o", "/dev/null"), "real",
                 quick=False),
        Workload("perl", ("perl", str(scripts / "hash.pl"), "2"), "real", quick=False),
        Workload("jq", ("jq", "-c", "[.[] | select(.meta.ok) | {user, kind, value}]"
                        " | group_by(.kind) | map({kind: .[0].kind, n: length,"
                        " total: (map(.value) | add)})", str(inputs["json"])), "real",
                 only_modes=tuple(m.name for m in all_modes())),
    ]


# === Tools ===


@dataclass
class Tools:
    env_bin: str
    preloads: dict[str, Path | None] = field(default_factory=dict)
    valgrind: str | None = None

    def missing(self, mode: Mode) -> str | None:
        """Why this mode cannot run here, or None."""
        if mode.preload is not None and self.preloads.get(mode.preload) is None:
            return "not installed"
        if mode.wrapper and self.valgrind is None:
            return "not installed"
        return None


def find_tools(build_dir: Path, lib: Path) -> Tools:
    scudo = sorted(glob.glob(
        "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.scudo_standalone-x86_64.so"))

    def first(*paths: str) -> Path | None:
        return next((Path(p) for p in paths if Path(p).is_file()), None)

    return Tools(
        env_bin=shutil.which("env") or "/usr/bin/env",
        preloads={
            "noop": build_dir / "libnoop_interposer.so",
            "kfence": lib,
            "scudo": Path(scudo[-1]) if scudo else None,
            "efence": first("/usr/lib/libefence.so.0", "/usr/lib/x86_64-linux-gnu/libefence.so.0"),
            "duma": first("/usr/lib/libduma.so.0", "/usr/lib/x86_64-linux-gnu/libduma.so.0"),
        },
        valgrind=shutil.which("valgrind"),
    )


def build_micro(build_dir: Path) -> dict[str, Path]:
    build(build_dir)  # micro_bench: loop and the do-nothing interposer
    out = build_dir / "workloads"
    run_cc([*LOOP_CFLAGS, "-fno-builtin-realloc", *WARN_CFLAGS, "-pthread",
            str(HERE / "micro" / "workloads.c"), "-o", str(out)])
    run_cc(["-O2", *WARN_CFLAGS, str(HERE / "micro" / "maxrss.c"), "-o", str(build_dir / "maxrss")])
    return {"loop": build_dir / "loop", "workloads": out, "maxrss": build_dir / "maxrss"}


def command(tools: Tools, wl: Workload, mode: Mode, extra_kfence: str = "") -> list[str]:
    """env -u ... VAR=value [wrapper] program args: pyperf's env filtering cannot interfere."""
    cmd = [tools.env_bin]
    for var in ("LD_PRELOAD", "KFENCE_OPTIONS", "SCUDO_OPTIONS", "PYTHONMALLOC"):
        cmd += ["-u", var]
    if mode.preload is not None:
        cmd.append(f"LD_PRELOAD={tools.preloads[mode.preload]}")
    env = dict(wl.env + mode.env)
    if extra_kfence and mode.kind == "kfence":
        opts = env.get("KFENCE_OPTIONS")
        env["KFENCE_OPTIONS"] = f"{opts}:{extra_kfence}" if opts else extra_kfence
    cmd += [f"{k}={v}" for k, v in env.items()]
    if mode.wrapper:
        cmd += [tools.valgrind or "valgrind", *mode.wrapper[1:]]
    return cmd + list(wl.argv)


def selected(wl: Workload, mode: Mode, quick: bool) -> bool:
    if quick and not (wl.quick and mode.quick):
        return False
    if wl.only_modes:
        return mode.name in wl.only_modes
    return not mode.wrapper


# === Preflight: status, peak RSS, sampled allocations ===


def run_once(maxrss: Path, cmd: list[str], timeout: float) -> tuple[str, float, int, str]:
    """(status, seconds, peak RSS in KiB, stderr tail) of one run of cmd, under maxrss."""
    with tempfile.TemporaryDirectory(prefix="kfence-bench-") as tmp:
        report = Path(tmp) / "rusage"
        err_path = Path(tmp) / "stderr"
        with err_path.open("wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen([str(maxrss), str(report), *cmd], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
            try:
                proc.wait(timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the command and its children
                proc.wait()
                timed_out = True
            elapsed = time.perf_counter() - start
        tail = " | ".join(err_path.read_text(errors="replace").strip().splitlines()[-3:])
        rss = status = 0
        if report.exists():  # not when killed: then the wall time is Python's
            rss, status, ns = (int(x) for x in report.read_text().split())
            elapsed = ns / 1e9
    if timed_out:
        return f"timeout (>{timeout:.0f} s)", elapsed, rss, tail
    code = os.waitstatus_to_exitcode(status)
    if code == KFENCE_EXITCODE:
        state = "bug reported"
    elif code < 0:
        state = f"crash ({signal.Signals(-code).name})"
    elif code != 0:
        state = f"exit {code}"
    else:
        state = "ok"
    return state, elapsed, rss, tail


def sampled_allocations(state_dir: Path) -> int:
    """Total sampled allocations over every process of the run (gcc runs cc1 and as)."""
    from kfence_py.state import StateView

    total = 0
    for path in state_dir.glob("*.state"):
        total += StateView.open(path).stats().total_allocations
    return total


@dataclass(frozen=True)
class Limits:
    """A run may take max(floor_s, ratio x glibc's time on the workload); Valgrind valgrind_s."""

    floor_s: float
    ratio: float
    valgrind_s: float

    def timeout(self, mode: Mode, glibc_s: float | None) -> float:
        if mode.wrapper:
            return self.valgrind_s
        return max(self.floor_s, self.ratio * (glibc_s or self.floor_s))


def preflight(tools: Tools, maxrss: Path, pairs: list[tuple[Workload, Mode]],
              limits: Limits) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    glibc_s: dict[str, float] = {}
    for wl, mode in pairs:
        name = f"{wl.name}/{mode.name}"
        why = tools.missing(mode)
        if why is not None:
            out[name] = Outcome(wl.name, mode.name, why)
            log.info("%-45s %s", name, why)
            continue
        with tempfile.TemporaryDirectory(prefix="kfence-bench-") as tmp:
            state_dir = Path(tmp) / "state"
            extra = f"state_dir={state_dir}" if mode.kind == "kfence" else ""
            limit = limits.timeout(mode, glibc_s.get(wl.name))
            status, seconds, rss, tail = run_once(maxrss, command(tools, wl, mode, extra), limit)
            samples = sampled_allocations(state_dir) if mode.kind == "kfence" else None
            if status == "ok" and mode.kind == "kfence" and not any(state_dir.glob("*.state")):
                # The library was loaded but did not start: what would be timed is not kfence.
                status = "kfence inactive"
        if mode.name == "glibc" and status == "ok":
            glibc_s[wl.name] = seconds
        out[name] = Outcome(wl.name, mode.name, status, seconds, rss, samples,
                            None if status == "ok" else tail)
        log.info("%-45s %-12s %7.2f s %8d KiB%s", name, status, seconds, rss,
                 f" {samples} sampled" if samples is not None else "")
    return out


# === pyperf runs ===


def bench_phase() -> int:
    """Inside a pyperf run: bench_command every pair listed in --pairs."""
    def forward(cmd: list[str], args: argparse.Namespace) -> None:
        cmd.extend(["--phase", "bench", "--pairs", str(args.pairs)])
        if args.round is not None:
            cmd.extend(["--round", str(args.round)])

    runner = pyperf.Runner(add_cmdline_args=forward)
    runner.argparser.add_argument("--phase")
    runner.argparser.add_argument("--pairs", type=Path)
    runner.argparser.add_argument("--round", type=int)
    args = runner.parse_args()
    if args.round is not None:  # report.py pairs values of the same round
        runner.metadata[ROUND_KEY] = args.round
    pairs = json.loads(args.pairs.read_text())
    for name, cmd in pairs.items():
        runner.bench_command(name, cmd)
    return 0


def pyperf_run(pairs: dict[str, list[str]], out: Path, pyperf_args: list[str],
               rnd: int | None = None) -> None:
    if not pairs:
        return
    pairs_file = out.with_suffix(".pairs.json")
    pairs_file.write_text(json.dumps(pairs))
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", "bench",
           "--pairs", str(pairs_file), "--quiet", "-o", str(out), *pyperf_args]
    if rnd is not None:
        cmd += ["--round", str(rnd)]
    log.info("pyperf: %d benchmarks (%s)", len(pairs), " ".join(pyperf_args))
    subprocess.run(cmd, check=True)
    pairs_file.unlink()


def merge(parts: list[Path], out: Path, snap: machine.Machine) -> None:
    """One benchmark per pair, with the runs of every round, stamped with the machine."""
    merged = merge_rounds(parts)
    out.unlink(missing_ok=True)
    if merged:
        machine.stamp_benchmarks(merged.values(), snap)
        pyperf.BenchmarkSuite(list(merged.values())).dump(str(out), replace=True)


# === Driver ===


def setup(args: argparse.Namespace) -> None:
    if args.no_setup:
        return
    res = subprocess.run(["sh", str(HERE / "setup.sh")], check=False)
    if res.returncode != 0:
        log.warning("setup.sh failed (%d): missing tools are shown as not installed",
                    res.returncode)


def main() -> int:
    if "--phase" in sys.argv:
        return bench_phase()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a representative subset, about 15 minutes on 2 cores")
    parser.add_argument("--lib", type=Path, help="libkfence.so (default: kfence-py lib-path)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-setup", action="store_true", help="do not run setup.sh")
    parser.add_argument("--no-python", action="store_true", help="skip the Python API part")
    parser.add_argument("--micro", action=argparse.BooleanOptionalAction, default=None,
                        help="also run micro_bench.py (per-call costs, num_objects scale); "
                        "default: on, off with --quick")
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="a run may take this many times glibc's time (at least 3 s) before "
                        "it is stopped and shown as a timeout (default: 6, or 30 without --quick; "
                        "never before 2 s, or 5 s without --quick)")
    parser.add_argument("--only", default="", help="comma-separated workloads to run")
    # Not Debian's /usr/bin/python3: it is a non-PIE executable, in which libkfence.so does
    # not start (its interposition check compares malloc's address with its own, and a
    # non-PIE executable's canonical PLT address is neither): run.py shows that as
    # "kfence inactive".
    parser.add_argument("--python", default=os.path.realpath(sys.executable),
                        help="the python3 of the python workloads (default: this one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    plan = QUICK if args.quick else FULL
    limits = Limits(floor_s=plan.floor_s, ratio=args.max_ratio or plan.max_ratio,
                    valgrind_s=60.0)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    setup(args)
    lib = (args.lib or find_libkfence()).resolve()
    snap = machine.snapshot(lib)
    log.info("kfence_py commit %s at %s; load average %s", snap.short_commit(),
             snap.kfence_py, snap.load_avg)
    bins = build_micro(out / "build")
    inputs = generate(out / "inputs")
    tools = find_tools(out / "build", lib)
    log.info("libkfence.so: %s; peers: %s", lib,
             ", ".join(f"{k}={v}" for k, v in tools.preloads.items()))

    workloads = all_workloads(bins, inputs, args.python)
    if args.only:
        keep = set(args.only.split(","))
        workloads = [w for w in workloads if w.name in keep]
    modes = all_modes()
    pairs = [(w, m) for w in workloads for m in modes if selected(w, m, args.quick)]
    log.info("%d workloads, %d modes, %d pairs", len(workloads), len(modes), len(pairs))

    started = time.monotonic()
    outcomes = preflight(tools, bins["maxrss"], pairs, limits)
    (out / "preflight.json").write_text(json.dumps(
        {"machine": snap.as_dict(), "outcomes": {k: asdict(v) for k, v in outcomes.items()}},
        indent=1))
    glibc = {o.workload: o.seconds for o in outcomes.values() if o.mode == "glibc"}
    fast: dict[str, list[str]] = {}
    slow: dict[str, list[str]] = {}
    for wl, mode in pairs:
        name = f"{wl.name}/{mode.name}"
        o = outcomes[name]
        if o.status != "ok":
            continue
        ratio = o.seconds / glibc.get(wl.name, o.seconds)
        (slow if ratio > SLOW_RATIO else fast)[name] = command(tools, wl, mode)

    # Interleaved rounds: each a pyperf run over every pair, the order reversed every
    # other round, so a noisy minute on this shared machine lands on many modes.
    common = ["--loops", "1", "--warmups", "0", "--timeout", str(int(limits.valgrind_s * 4))]
    parts = []
    for rnd in range(plan.rounds):
        order = list(fast.items())
        if rnd % 2:
            order.reverse()
        part = out / f"programs.round{rnd}.json"
        pyperf_run(dict(order), part, [*plan.pyperf_values, *common], rnd)
        parts.append(part)
    part = out / "programs.slow.json"
    pyperf_run(slow, part, [*plan.slow_values, *common])
    parts.append(part)
    merge(parts, out / "programs.json", snap)
    log.info("programs measured in %.0f s", time.monotonic() - started)

    py_out = out / "python_api.json"
    py_out.unlink(missing_ok=True)  # never a previous run's, read back as this one's
    if not args.no_python:
        subprocess.run([sys.executable, str(HERE / "py_bench.py"),
                        *(["--quick"] if args.quick else []), "--json", str(py_out)],
                       check=True)

    micro = args.micro if args.micro is not None else not args.quick
    if micro:
        subprocess.run([sys.executable, str(HERE / "micro_bench.py"),
                        *(["--quick"] if args.quick else []), "--lib", str(lib),
                        "--build-dir", str(out / "build"), "--json", str(out / "micro.json")],
                       check=True)
    command_line = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    summary = write_report(out, command_line, with_micro=micro)
    print(summary)
    log.info("total %.0f s; summary in %s", time.monotonic() - started, out / "summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
