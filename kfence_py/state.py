"""Reading the state libkfence.so shares: counters, slots, reports, control.

One reader for every source: the state of this process (through cffi, over
the library's own memory) or a ``<state_dir>/<pid>.state`` file of another
process, alive or dead (an mmap).  Both go through the same cffi struct views,
so the layout is declared once, in csrc/kfence_state.h.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._native import ffi, lib, text

MAGIC = b"KFENCE\0\0"
SUPPORTED_VERSION = 1
SLOT_STATES = {lib.KFENCE_SLOT_UNUSED: "unused", lib.KFENCE_SLOT_ALLOCATED: "allocated",
               lib.KFENCE_SLOT_FREED: "freed", lib.KFENCE_SLOT_BUSY: "busy"}
ACCESS = {lib.KFENCE_ACCESS_NONE: None, lib.KFENCE_ACCESS_READ: "read",
          lib.KFENCE_ACCESS_WRITE: "write"}
SKIP_COUNTERS = {
    "capacity": lib.KFENCE_COUNTER_SKIP_CAPACITY,
    "too_large": lib.KFENCE_COUNTER_SKIP_TOO_LARGE,
    "alignment": lib.KFENCE_COUNTER_SKIP_ALIGNMENT,
    "map_failed": lib.KFENCE_COUNTER_SKIP_MAP_FAILED,
}


class StateError(Exception):
    """A state that cannot be read: wrong magic or version, truncated."""


class StateVersionError(StateError):
    """A state written by a kfence_py with another state version or layout."""


@dataclass(frozen=True)
class Stats:
    """KFENCE's debugfs ``stats``, plus the sampling settings in force."""

    pid: int
    enabled: bool
    sample_interval_ms: int
    sample_rate: int
    burst: int
    pool_size: int  # slots
    currently_allocated: int
    total_allocations: int
    total_frees: int
    zombie_allocations: int  # objects caught between allocated and freed (mid-free)
    total_bugs: int
    skipped: dict[str, int] = field(default_factory=dict)
    referenced_at_exit: int = 0

    def lines(self) -> list[str]:
        """KFENCE's stats text, one "name: value" per line."""
        rows = [("enabled", int(self.enabled)),
                ("currently allocated", self.currently_allocated),
                ("total allocations", self.total_allocations),
                ("total frees", self.total_frees),
                ("zombie allocations", self.zombie_allocations),
                ("total bugs", self.total_bugs)]
        rows += [(f"skipped allocations ({k.replace('_', ' ')})", v)
                 for k, v in self.skipped.items()]
        rows += [("sample interval (ms)", self.sample_interval_ms),
                 ("sample rate", self.sample_rate), ("burst", self.burst),
                 ("pool size", self.pool_size)]
        return [f"{name}: {value}" for name, value in rows]


@dataclass(frozen=True)
class ObjectInfo:
    """One pool slot, as KFENCE's debugfs ``objects`` shows it."""

    index: int
    state: str
    address: int
    size: int
    cache: str
    alloc_thread: int
    alloc_time: float  # seconds since the library started
    alloc_stack: tuple[int, ...]
    free_thread: int | None
    free_time: float | None
    free_stack: tuple[int, ...]
    alloc_python: str = ""  # Python traceback at allocation (CPython allocator samples)
    free_python: str = ""  # ... and at free

    def lines(self) -> list[str]:
        out = [f"kfence-#{self.index}: {self.address:#x}-{self.address + max(self.size, 1) - 1:#x}"
               f", size={self.size}, cache={self.cache}, state={self.state}",
               f"allocated by thread {self.alloc_thread} at {self.alloc_time:.6f}s:"]
        out += [f" #{i} {pc:#x}" for i, pc in enumerate(self.alloc_stack)]
        out += self.alloc_python.splitlines()
        if self.free_thread is not None:
            out.append(f"freed by thread {self.free_thread} at {self.free_time:.6f}s:")
            out += [f" #{i} {pc:#x}" for i, pc in enumerate(self.free_stack)]
            out += self.free_python.splitlines()
        return out


@dataclass(frozen=True)
class ReportRecord:
    """A report as recorded in the state (the printed text is parsed by reports.py)."""

    sequence: int
    kind: str
    access: str | None
    address: int
    distance: int
    thread: int
    time: float
    stack: tuple[int, ...]
    object: ObjectInfo | None
    corrupted: bytes
    corrupted_mask: int


def _note(field: Any) -> str:
    return ffi.string(field).decode(errors="replace")


def _stack(st: Any) -> tuple[int, ...]:
    return tuple(st.pc[i] for i in range(min(st.depth, 64)))


class StateView:
    """Typed views over one state mapping.  Keep it open while reading."""

    def __init__(self, buffer: Any, *, source: str, keepalive: Any = None) -> None:
        self.source = source
        self._keepalive = keepalive
        size = len(buffer)
        header_size = ffi.sizeof("struct kfence_state")
        if size < header_size:
            raise StateError(f"{source}: truncated state ({size} bytes, header is {header_size})")
        self._base = ffi.from_buffer(buffer)
        self.header = ffi.cast("struct kfence_state *", self._base)
        h = self.header
        magic = bytes(ffi.buffer(h.magic, 8))
        if magic != MAGIC:
            raise StateError(f"{source}: not a kfence_py state (magic {magic!r})")
        if h.version != SUPPORTED_VERSION:
            raise StateVersionError(f"{source}: state version {h.version}, this kfence_py "
                                    f"reads version {SUPPORTED_VERSION}")
        if (h.header_size, h.slot_size, h.report_size) != (
                header_size, ffi.sizeof("struct kfence_slot"), ffi.sizeof("struct kfence_report")):
            raise StateVersionError(f"{source}: state layout differs from this kfence_py's")
        if size < h.total_size or h.reports_offset + h.max_reports * h.report_size > size:
            raise StateError(f"{source}: truncated state ({size} of {h.total_size} bytes)")
        self.slots = ffi.cast("struct kfence_slot *", self._base + h.slots_offset)
        self._reports = ffi.cast("struct kfence_report *", self._base + h.reports_offset)

    @classmethod
    def in_process(cls) -> StateView | None:
        """The state of this process's library, or None when it has not started."""
        ptr = lib.kfence_state()
        if ptr == ffi.NULL:
            return None
        return cls(ffi.buffer(ptr, ptr.total_size), source=f"pid {os.getpid()}")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False) -> StateView:
        """Map a state file (read-only unless writable, for the controller)."""
        path = Path(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise StateError(f"{path}: empty state file")
            # cffi views need a writable buffer: read-only is a private copy-on-write map
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_COPY
            mapping = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        return cls(mapping, source=str(path), keepalive=mapping)

    # --- reading -----------------------------------------------------------

    def counter(self, index: int) -> int:
        return int(self.header.counters[index])

    def stats(self) -> Stats:
        h = self.header
        busy = sum(1 for i in range(h.num_slots) if self.slots[i].state == lib.KFENCE_SLOT_BUSY)
        return Stats(
            pid=h.pid, enabled=bool(h.control.enabled),
            sample_interval_ms=h.control.sample_interval_ms, sample_rate=h.control.sample_rate,
            burst=h.control.burst, pool_size=h.num_slots,
            currently_allocated=self.counter(lib.KFENCE_COUNTER_ALLOCATED),
            total_allocations=self.counter(lib.KFENCE_COUNTER_ALLOCS),
            total_frees=self.counter(lib.KFENCE_COUNTER_FREES),
            zombie_allocations=busy,
            total_bugs=self.counter(lib.KFENCE_COUNTER_BUGS),
            skipped={name: self.counter(i) for name, i in SKIP_COUNTERS.items()},
            referenced_at_exit=self.counter(lib.KFENCE_COUNTER_LEAK_REFERENCED),
        )

    def _object(self, index: int, slot: Any) -> ObjectInfo:
        freed = slot.free_tid != 0
        return ObjectInfo(
            index=index, state=SLOT_STATES.get(slot.state, str(slot.state)),
            address=slot.addr, size=slot.size, cache=text(lib.kfence_cache_name(slot.cache)),
            alloc_thread=slot.alloc_tid, alloc_time=slot.alloc_ns / 1e9,
            alloc_stack=_stack(slot.alloc_stack),
            free_thread=slot.free_tid if freed else None,
            free_time=slot.free_ns / 1e9 if freed else None,
            free_stack=_stack(slot.free_stack) if freed else (),
            alloc_python=_note(slot.alloc_note),
            free_python=_note(slot.free_note) if freed else "",
        )

    def objects(self, *, include_unused: bool = False) -> list[ObjectInfo]:
        out = []
        for i in range(self.header.num_slots):
            slot = self.slots[i]
            if slot.state != lib.KFENCE_SLOT_UNUSED or include_unused:
                out.append(self._object(i, slot))
        return out

    def reports(self) -> list[ReportRecord]:
        """The recent reports still in the ring, oldest first."""
        h = self.header
        out = []
        for i in range(h.max_reports):
            r = self._reports[i]
            if r.sequence == 0:
                continue
            out.append(ReportRecord(
                sequence=r.sequence, kind=text(lib.kfence_bug_name(r.kind)),
                access=ACCESS.get(r.access), address=r.addr, distance=r.distance,
                thread=r.tid, time=r.ns / 1e9, stack=_stack(r.stack),
                object=self._object(r.slot, r.object) if r.slot >= 0 else None,
                corrupted=bytes(ffi.buffer(r.corrupted, 16)), corrupted_mask=r.corrupted_mask,
            ))
        return sorted(out, key=lambda rec: rec.sequence)
