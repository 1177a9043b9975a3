"""Where the controller finds state: a directory of state files, or this process.

A state directory holds ``<pid>.state`` for every process that ran with
``state_dir`` set (a forked child adds its own), and, when ``kfence-py run``
manages it, ``report.<pid>``: the printed reports of that process.  Files of
processes that have exited stay readable (post-mortem).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._native import lib
from .elf import Placers, ProcessMaps, parse_maps
from .options import runtime_options
from .state import ReportRecord, StateError, StatePermissionError, StateView, write_control

log = logging.getLogger("kfence_py")

STATE_FILE = re.compile(r"^(?P<pid>\d+)\.state$")
REPORT_PREFIX = "report"  # run sets report_path=<state_dir>/report: files report.<pid>


@dataclass
class Process:
    """One process's state, as found now."""

    pid: int
    view: StateView
    running: bool
    state_file: Path | None = None  # None: this process's own state
    report_file: Path | None = None  # its printed reports, when run collected them

    def control(self) -> dict[str, int]:
        """Its runtime options in force, by name."""
        return self.view.control()

    def maps(self) -> Placers:
        """Where its raw pcs lie: the module table of its state (which outlives it),
        then, for a pc the table lacks, its memory maps while it runs."""
        return Placers(self.view.module_table(),
                       ProcessMaps.read(self.pid) if self.running else None)


@dataclass(frozen=True)
class Unreadable:
    """A state file that could not be read, and why."""

    path: Path
    error: str


class StateNotFound(StateError):
    """No state where one was looked for."""


class ConfigError(ValueError):
    """A configuration change that cannot be applied; the message says why."""


class NoRunningProcess(ConfigError):
    """A configuration change with no running process to take it."""


class Source(Protocol):
    def processes(self, pid: int | None = None) -> tuple[list[Process], list[Unreadable]]:
        """The processes (only pid's when given) and the files that could not be read."""

    def set_control(self, process: Process, values: Mapping[str, int]) -> None:
        """Change runtime options (by name: the control block's fields) of process."""

    def describe(self) -> str: ...


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """When pid started (seconds since the epoch, to a second), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        ticks = int(fields[19])  # field 22, starttime, counted from field 3
    except (OSError, ValueError, IndexError):
        return None
    boot = _boot_time()
    return None if boot is None else boot + ticks / os.sysconf("SC_CLK_TCK")


START_SLACK = 2.0  # seconds: /proc's boot time is whole seconds


def is_running(pid: int, state_file: Path | None) -> bool:
    """Whether pid is alive and is the process that maps state_file.

    A recycled pid, or a zombie whose memory is gone, does not count: the
    state file must appear in its maps (same inode).  When its maps cannot be
    read (another user's process), its start time (/proc/<pid>/stat) is
    compared with the file's last change: a process that started after the
    file last changed did not write it.  The header's start time is not used
    for this: a forked child's state starts as a copy of its parent's.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if state_file is None:
        return True
    try:
        changed = state_file.stat().st_ctime
    except OSError:
        return False
    maps = ProcessMaps.read(pid)
    if maps is None:
        started = process_start_time(pid)
        if started is None:
            return Path(f"/proc/{pid}").exists()
        return started <= changed + START_SLACK
    try:
        inode = state_file.stat().st_ino
    except OSError:
        return False
    return maps.maps_inode(inode)


class DirectorySource:
    """Every ``<pid>.state`` in a state directory, alive or not."""

    def __init__(self, state_dir: str | os.PathLike[str],
                 report_prefix: str | os.PathLike[str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.report_prefix = (Path(report_prefix) if report_prefix is not None
                              else self.state_dir / REPORT_PREFIX)
        self._warned: set[tuple[Path, str]] = set()

    def describe(self) -> str:
        return str(self.state_dir)

    def state_files(self) -> list[tuple[int, Path]]:
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            raise StateNotFound(f"{self.state_dir}: no such state directory") from None
        except PermissionError as exc:
            raise StatePermissionError(f"{self.state_dir}: {exc.strerror}") from None
        except OSError as exc:
            raise StateError(f"{self.state_dir}: {exc.strerror}") from None
        found = [(int(m["pid"]), self.state_dir / name)
                 for name in names if (m := STATE_FILE.match(name))]
        return sorted(found)

    def processes(self, pid: int | None = None) -> tuple[list[Process], list[Unreadable]]:
        out, bad = [], []
        for file_pid, path in self.state_files():
            if pid is not None and file_pid != pid:
                continue
            try:
                view = StateView.open(path)
            except StateError as exc:
                # A file being created right now (a fork child's) is caught half written;
                # a bad one is skipped, with a warning the first time it is met.
                bad.append(Unreadable(path, str(exc)))
                if (path, str(exc)) not in self._warned:
                    if len(self._warned) > 4096:
                        self._warned.clear()
                    self._warned.add((path, str(exc)))
                    log.warning("skipped %s", exc)
                continue
            report = Path(f"{self.report_prefix}.{file_pid}")
            out.append(Process(file_pid, view, is_running(file_pid, path), path,
                               report if report.is_file() else None))
        return out, bad

    def set_control(self, process: Process, values: Mapping[str, int]) -> None:
        assert process.state_file is not None
        write_control(process.state_file, values)


class InProcessSource:
    """The state of this process (empty until the library has started)."""

    def describe(self) -> str:
        return f"pid {os.getpid()}"

    def processes(self, pid: int | None = None) -> tuple[list[Process], list[Unreadable]]:
        view = StateView.in_process()
        if view is None or (pid is not None and pid != os.getpid()):
            return [], []
        return [Process(os.getpid(), view, True)], []

    def set_control(self, process: Process, values: Mapping[str, int]) -> None:
        process.view.set_control(values)


def parse_changes(changes: Mapping[str, object]) -> dict[str, int]:
    """Validated control-block changes: option name to value.  ConfigError if bad."""
    specs = runtime_options()
    if not changes:
        raise ConfigError(f"nothing to change; give key=value with a key among "
                          f"{', '.join(specs)}")
    out = {}
    for key, value in changes.items():
        if key not in specs:
            raise ConfigError(f"{key!r} cannot change at run time; these can: "
                              f"{', '.join(specs)}")
        try:
            out[key] = int(specs[key].normalize(value))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return out


def _running(source: Source, pid: int | None) -> list[Process]:
    """The running processes of source (only pid's when given); NoRunningProcess if none."""
    processes, _ = source.processes(pid)
    running = [p for p in processes if p.running]
    if not running:
        who = f"process {pid}" if pid is not None else "process"
        raise NoRunningProcess(f"no running {who} in {source.describe()}")
    return running


def apply_changes(source: Source, changes: Mapping[str, object],
                  pid: int | None = None) -> list[Process]:
    """Write changes into the control block of every running process (or pid's).

    The data plane reads the block on its next sampling decision.  Returns
    the processes changed; ConfigError when none could be.
    """
    values = parse_changes(changes)
    running = _running(source, pid)
    for process in running:
        source.set_control(process, values)
        log.info("pid %d: %s", process.pid, ", ".join(f"{k}={v}" for k, v in values.items()))
    return running


SWEEP_WAIT = 5.0  # seconds a canary sweep is waited for


@dataclass
class Sweep:
    """A canary check of a process's live objects, asked for and waited for."""

    process: Process  # as read after it (or when the wait ended)
    done: bool  # False: the process made no sampled allocation in time, so did not look
    reports: list[ReportRecord]  # what it found: corruption of live objects


def _sweeps_done(process: Process) -> int:
    return process.view.stats().counters[lib.KFENCE_COUNTER_SWEEPS]


def sweep(source: Source, pid: int | None = None, wait: float = SWEEP_WAIT) -> list[Sweep]:
    """Have every running process (or pid) check the canaries of its live objects.

    The request is a new value of the runtime option canary_sweep; a process
    serves it at its next sampled allocation and counts it (canary sweeps).
    Waits up to wait seconds for all of them.  NoRunningProcess when none runs.
    """
    running = _running(source, pid)
    limit = runtime_options()["canary_sweep"].maximum + 1
    before = {}
    for p in running:
        before[p.pid] = (_sweeps_done(p), max((r.sequence for r in p.view.reports()), default=0))
        source.set_control(p, {"canary_sweep": (p.control()["canary_sweep"] + 1) % limit})
    deadline = time.monotonic() + wait
    pending = dict.fromkeys(before)
    results: dict[int, Process] = {}
    while True:
        for p in source.processes(pid)[0]:
            if p.pid in pending and (_sweeps_done(p) > before[p.pid][0] or not p.running):
                del pending[p.pid]
            if p.pid in before:
                results[p.pid] = p
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return [Sweep(p, p.pid not in pending,
                  [r for r in p.view.reports() if r.sequence > before[p.pid][1]
                   and r.detail == lib.KFENCE_DETAIL_SWEEP])
            for p in results.values()]


def find_state_file(pid: int, state_dir: str | os.PathLike[str] | None) -> Path:
    """The state file of pid: in state_dir, or the one its maps show.  StateError if none."""
    if state_dir is not None:
        path = Path(state_dir) / f"{pid}.state"
        if not path.exists():
            raise StateNotFound(f"{path}: no state file for pid {pid}")
        return path
    try:
        maps = ProcessMaps(list(parse_maps(Path(f"/proc/{pid}/maps").read_text())))
    except PermissionError:
        # Another user's process: it exists, and its maps are not ours to read.
        raise StatePermissionError(
            f"pid {pid}: permission denied reading /proc/{pid}/maps (another user's "
            "process?); give --state-dir DIR to read its state file there") from None
    except OSError:
        raise StateNotFound(
            f"no process {pid}; give --state-dir DIR to read the state it left") from None
    for m in maps.mappings:
        if m.path.endswith(f"/{pid}.state"):
            return Path(m.path)
    raise StateNotFound(f"pid {pid} has no state file mapped: start it with "
                        "KFENCE_OPTIONS=state_dir=DIR, or give --state-dir")


class FileSource(DirectorySource):
    """The one state file of a pid (``--pid N``)."""

    def __init__(self, pid: int, state_dir: str | os.PathLike[str] | None) -> None:
        path = find_state_file(pid, state_dir)
        super().__init__(path.parent)
        self.pid = pid
        StateView.open(path)  # a bad file is an error here, not a skipped entry

    def processes(self, pid: int | None = None) -> tuple[list[Process], list[Unreadable]]:
        if pid is not None and pid != self.pid:
            return [], []
        return super().processes(self.pid)
