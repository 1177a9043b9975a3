"""Where and on what a benchmark ran: one record for every results file of bench/.

A figure nobody can place cannot be checked. Every benchmark script takes a
`Machine` snapshot when it starts (CPU model and cores, kernel, glibc, Python,
the kfence_py commit it measured with its dirty flag, the date and the load
average) and writes it into its results: into the metadata of every benchmark
of a pyperf JSON file (`stamp`), as a "machine" object in other JSON files, and
as the header of every summary (`header`), which report.py reads back from the
raw JSON (`from_metadata`), so a summary re-rendered elsewhere still names the
machine that measured it.

    python bench/machine.py [PATH]    # the snapshot for the kfence_py tree at PATH
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

UNKNOWN = "unknown"
# Every key this module puts into pyperf metadata starts with this; pyperf's own keys
# (date, cpu_model_name, load_avg_1min, ...) are per worker run and left alone.
PREFIX = "kfbench_"


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpus: int  # online logical CPUs
    usable_cpus: int  # in this process's affinity mask
    virtualized: str  # "yes" (the CPU's hypervisor flag), "no" or UNKNOWN
    kernel: str  # uname -r and -v
    glibc: str  # the running C library, and the Debian package's version when there is one
    python: str  # version, implementation and executable
    kfence_py: str  # the tree (or installed package) measured
    kfence_py_version: str
    commit: str  # git rev-parse HEAD of that tree, or UNKNOWN outside a checkout
    dirty: str  # "yes": `git status --porcelain` lists changes; "no"; or UNKNOWN
    date: str  # UTC, ISO 8601, when the snapshot was taken (the start of the run)
    load_avg: str  # /proc/loadavg's 1, 5 and 15 minute averages at that time

    def metadata(self) -> dict[str, str | int]:
        """For pyperf: prefixed keys, no empty value, no newline (pyperf refuses both)."""
        out: dict[str, str | int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[PREFIX + f.name] = value if isinstance(value, int) else one_line(value)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short_commit(self) -> str:
        if self.commit == UNKNOWN:
            return UNKNOWN
        return self.commit[:12] + (" (dirty)" if self.dirty == "yes" else "")


def one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat or UNKNOWN


def from_metadata(metadata: dict[str, Any]) -> Machine | None:
    """The snapshot stamped into pyperf metadata, or None when it is not there (or partial)."""
    values = {}
    for f in fields(Machine):
        key = PREFIX + f.name
        if key not in metadata:
            return None
        values[f.name] = metadata[key]
    return Machine(**values)


def from_dict(data: dict[str, Any]) -> Machine | None:
    names = {f.name for f in fields(Machine)}
    if not names <= data.keys():
        return None
    return Machine(**{k: data[k] for k in names})


# === Collection ===


def cpu_model(cpuinfo: str) -> str:
    """The CPU's name in /proc/cpuinfo: x86's "model name", else other architectures' fields."""
    keys = ("model name", "cpu model", "Model", "Hardware", "uarch")
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and key in keys and value and key not in found:
            found[key] = value
    return next((found[k] for k in keys if k in found), "")


def hypervisor(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return "yes" if "hypervisor" in value.split() else "no"
    return UNKNOWN


def glibc_version() -> str:
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None
    if not libc:
        name, version = platform.libc_ver()
        libc = f"{name} {version}".strip()
    package = run_text(["dpkg-query", "-W", "-f", "${Version}", "libc6"])
    if libc and package:
        return f"{libc} (Debian libc6 {package})"
    return libc or UNKNOWN


def run_text(cmd: list[str], cwd: Path | None = None) -> str | None:
    """stdout of cmd, stripped, or None when the tool is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(path: Path) -> tuple[str, str]:
    """(commit, dirty) of the git checkout holding path; (UNKNOWN, UNKNOWN) outside one."""
    where = path if path.is_dir() else path.parent
    commit = run_text(["git", "-C", str(where), "rev-parse", "HEAD"])
    if not commit:
        return UNKNOWN, UNKNOWN
    status = run_text(["git", "-C", str(where), "status", "--porcelain"])
    if status is None:
        return commit, UNKNOWN
    return commit, "yes" if status else "no"


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def kfence_py_version(source: Path) -> str:
    """The version written in the tree's kfence_py/__init__.py (the package is not imported)."""
    init = (source if source.is_dir() else source.parent) / "__init__.py"
    for line in read_text(str(init)).splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return UNKNOWN


def snapshot(source: Path) -> Machine:
    """The machine now, and the kfence_py tree at source (its package directory or libkfence.so)."""
    cpuinfo = read_text("/proc/cpuinfo")
    commit, dirty = git_state(source)
    uname = platform.uname()
    load = read_text("/proc/loadavg").split()[:3]
    return Machine(
        cpu_model=cpu_model(cpuinfo) or platform.processor() or uname.machine or UNKNOWN,
        cpus=os.cpu_count() or 0,
        usable_cpus=len(os.sched_getaffinity(0)),
        virtualized=hypervisor(cpuinfo),
        kernel=one_line(f"{uname.system} {uname.release} {uname.version}"),
        glibc=glibc_version(),
        python=one_line(f"{platform.python_version()} ({platform.python_implementation()}) "
                        f"{os.path.realpath(sys.executable)}"),
        kfence_py=str(source.resolve()),
        kfence_py_version=kfence_py_version(source),
        commit=commit,
        dirty=dirty,
        date=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        load_avg=" ".join(load) if load else UNKNOWN,
    )


def package_source() -> Path:
    """The directory of the kfence_py this interpreter imports (what py_bench measures)."""
    import kfence_py

    return Path(kfence_py.__file__).resolve().parent


# === Writing ===


def stamp(path: Path, machine: Machine) -> None:
    """Write the snapshot into the metadata of every benchmark of a pyperf JSON file."""
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(path))
    stamp_benchmarks(suite.get_benchmarks(), machine)
    suite.dump(str(path), replace=True)


def stamp_benchmarks(benchmarks: Iterable[Any], machine: Machine) -> None:
    """The same for pyperf.Benchmark objects in memory (every run of each gets it)."""
    for bench in benchmarks:
        bench.update_metadata(machine.metadata())


def tree(m: Machine) -> str:
    """The package directory measured, whether the record names it or its libkfence.so."""
    path = PurePosixPath(m.kfence_py)
    return str(path.parent if path.suffix == ".so" else path)


def header(machine: Machine | None, others: dict[str, Machine] | None = None) -> list[str]:
    """Markdown lines naming the machine and the software a summary's figures come from.

    others: snapshots of further results files (by label) shown where their kfence_py
    tree or commit differs from the main one.
    """
    if machine is None:
        return ["Machine: not recorded in these results (made before bench/machine.py).", ""]
    m = machine
    lines = [
        "| machine and software | |",
        "|---|---|",
        f"| CPU | {m.cpu_model}; {m.cpus} logical CPUs ({m.usable_cpus} usable); "
        f"virtualized: {m.virtualized} |",
        f"| kernel | {m.kernel} |",
        f"| C library | {m.glibc} |",
        f"| Python | {m.python} |",
        f"| kfence_py | {m.kfence_py_version} at {m.kfence_py}, commit {m.commit}"
        f"{'' if m.dirty == 'no' else f', uncommitted changes: {m.dirty}'} |",
        f"| started | {m.date} (UTC); load average {m.load_avg} (1, 5, 15 min) |",
    ]
    for label, other in (others or {}).items():
        if (other.commit, other.dirty, tree(other)) != (m.commit, m.dirty, tree(m)):
            lines.append(f"| kfence_py ({label}) | {other.kfence_py_version} at "
                         f"{other.kfence_py}, commit {other.short_commit()} |")
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?",
                        help="kfence_py's package directory or libkfence.so "
                        "(default: the kfence_py this interpreter imports)")
    args = parser.parse_args()
    print("\n".join(header(snapshot(args.path or package_source()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
