"""Reading the state libkfence.so shares: counters, slots, reports, control.

One reader for every source: the state of this process (through cffi, over
the library's own memory) or a ``<state_dir>/<pid>.state`` file of another
process, alive or dead.  Both go through the same cffi struct views, so the
layout is declared once, in csrc/kfence_state.h.

A state file is read into a private buffer (os.preadv), not mapped: a file
truncated under a mapping kills its reader with SIGBUS, and every mapping
holds a file descriptor for as long as it lives.  A copy costs one read of
well under a megabyte per process (the default pool), holds no descriptor
once taken, and can be checked once and then trusted: every offset and count
in its header is checked against the copy's size, and every enum against its
table, before any view is made.  Control-block changes go back with pwrite().
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._native import ffi, lib
from .contract import (
    ACCESSES,
    BUG_KINDS,
    CACHES,
    CORRUPTION_WINDOW,
    COUNTERS,
    DETAILS,
    FAMILIES,
    MAX_REPORTS,
    SLOT_STATES,
    STACK_MAX,
    STATE_VERSION,
    Counter,
)
from .elf import DELETED, Module, ModuleTable
from .options import OptionSpec, option_specs, runtime_options

MAGIC = b"KFENCE\0\0"
HEADER_SIZE = ffi.sizeof("struct kfence_state")
SLOT_SIZE = ffi.sizeof("struct kfence_slot")
REPORT_SIZE = ffi.sizeof("struct kfence_report")
MODULE_SIZE = ffi.sizeof("struct kfence_module")
MAX_MODULES: int = lib.KFENCE_MAX_MODULES
MODULE_PATHS: int = lib.KFENCE_MODULE_PATHS  # bytes of the module table's paths
BUILD_ID_MAX: int = lib.KFENCE_BUILD_ID_MAX
# The largest state a library can publish: as many slots as num_objects allows,
# the report ring, the module table, and room for the header to grow.
MAX_SLOTS = option_specs()["num_objects"].maximum
MAX_STATE_SIZE = (HEADER_SIZE + MAX_SLOTS * SLOT_SIZE + MAX_REPORTS * REPORT_SIZE
                  + MAX_MODULES * MODULE_SIZE + MODULE_PATHS + (1 << 16))


class StateError(Exception):
    """A state that cannot be read: wrong magic or version, truncated."""


class StatePermissionError(StateError):
    """A state the file system (or /proc) does not let us read or write."""


class StateVersionError(StateError):
    """A state written by a kfence_py with another state version or layout."""


def _fields(struct_name: str, *names: str) -> dict[str, int]:
    return {name: ffi.offsetof(struct_name, name) for name in names}


_SLOT = _fields("struct kfence_slot", "state", "cache")
_REPORT = _fields("struct kfence_report", "kind", "access", "slot", "object", "detail",
                  "dealloc")
CONTROL_OFFSET = ffi.offsetof("struct kfence_state", "control")
CONTROL_FIELDS = _fields("struct kfence_control", *runtime_options())
_U32 = struct.Struct("=I")  # a control field, in the byte order of this machine


def _column(buffer: memoryview, start: int, count: int, stride: int, offset: int,
            fmt: Literal["I", "i"] = "I") -> memoryview:
    """The 4-byte field at offset of count records of stride bytes from start."""
    if count == 0:
        return memoryview(b"").cast(fmt)
    words = buffer[start:start + count * stride].cast(fmt)
    return words[offset // 4::stride // 4]


def _check_enum(source: str, what: str, values: memoryview, table: tuple[object, ...]) -> None:
    bad = next((v for v in values if v >= len(table)), None)
    if bad is not None:
        raise StateError(f"{source}: bad state ({what} {bad} is out of range "
                         f"0..{len(table) - 1})")


# The zombie allocations (slots caught mid-free): counted by the reader, not the library,
# and shown as one more counter, before the bugs as in KFENCE's stats.
ZOMBIE = Counter(index=-1, name="zombie allocations", type="GAUGE", metric="zombie_objects",
                 label="", help="Objects caught between allocation and free")
STATS_COUNTERS = (*(c for c in COUNTERS if c.index < lib.KFENCE_COUNTER_BUGS), ZOMBIE,
                  *(c for c in COUNTERS if c.index >= lib.KFENCE_COUNTER_BUGS))
# Stats' name for the labelled counters of a family, where it predates the counter table.
_FAMILY_KEYS = {"skipped_allocations": "skipped"}


def _setting_key(spec: OptionSpec) -> str:
    """A runtime option's name in Stats: with its unit when it has one."""
    return f"{spec.name}_ms" if spec.type == "MS" else spec.name


@dataclass(frozen=True)
class Stats:
    """KFENCE's debugfs ``stats``, plus the sampling settings in force.

    Made of the library's tables: a value per runtime option (``control``)
    and per counter (``counters``).  ``as_dict()`` names them, and they are
    attributes under those names: ``enabled``, ``sample_interval_ms``,
    ``total_bugs``, ``currently_allocated``, ``skipped`` (by reason)...
    """

    pid: int
    pool_size: int  # slots
    zombie_allocations: int  # objects caught between allocated and freed (mid-free)
    control: Mapping[str, int]  # the runtime options in force, by option name
    counters: tuple[int, ...]  # indexed by enum kfence_counter (contract.COUNTERS)

    def as_dict(self) -> dict[str, Any]:
        """Every value by its name, in KFENCE's order (``kfence-py stats --json``).

        The settings (a bool for a BOOL option, "_ms" after an MS one), the
        pool size, then STATS_COUNTERS by Counter.key, with the labelled ones
        of a family in a dict of their own (``skipped``).
        """
        out: dict[str, Any] = {"pid": self.pid}
        for spec in runtime_options().values():
            value = self.control[spec.name]
            out[_setting_key(spec)] = bool(value) if spec.type == "BOOL" else value
        out["pool_size"] = self.pool_size
        for counter in STATS_COUNTERS:
            value = self.value(counter)
            if counter.label:
                family = _FAMILY_KEYS.get(counter.metric, counter.metric)
                out.setdefault(family, {})[counter.key] = value
            else:
                out[counter.key] = value
        return out

    def value(self, counter: Counter) -> int:
        """The value of one of STATS_COUNTERS."""
        return self.zombie_allocations if counter is ZOMBIE else self.counters[counter.index]

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not fields: stats().total_bugs, .sample_interval_ms, ...
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.as_dict()[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}") from None


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


@dataclass(frozen=True)
class ReportRecord:
    """A report as recorded in the state (reports.py parses the printed text)."""

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
    repeats: int = 0  # later bugs of the same kind, access and allocation site, not printed
    detail: int = 0  # index in contract.DETAILS: the sentence under the first line
    dealloc: int = 0  # index in contract.FAMILIES of the function that freed (mismatches)
    detail_value: int = 0  # the detail's {value}


def check_layout(buffer: Any, source: str) -> None:
    """StateError unless buffer holds a whole state this kfence_py can read safely.

    Every offset and count of the header is checked against len(buffer), and
    every enum of every slot and report against its table: after this, no
    view over the buffer reads outside it and no lookup fails.
    """
    view = memoryview(buffer).cast("B")
    size = len(view)
    if size < HEADER_SIZE:
        raise StateError(f"{source}: truncated state ({size} bytes, the header is {HEADER_SIZE})")
    h = ffi.from_buffer("struct kfence_state *", view)
    magic = bytes(ffi.buffer(h.magic, 8))
    if magic != MAGIC:
        raise StateError(f"{source}: not a kfence_py state (magic {magic!r})")
    if h.version != STATE_VERSION:
        raise StateVersionError(f"{source}: state version {h.version}, this kfence_py "
                                f"reads version {STATE_VERSION}")
    if (h.header_size, h.slot_size, h.report_size) != (HEADER_SIZE, SLOT_SIZE, REPORT_SIZE):
        raise StateVersionError(f"{source}: state layout differs from this kfence_py's")
    total = int(h.total_size)
    if total > size:
        raise StateError(f"{source}: truncated state ({size} of {total} bytes)")
    if total > MAX_STATE_SIZE:
        raise StateError(f"{source}: bad state (total_size {total} is over {MAX_STATE_SIZE})")
    num_slots, max_reports = int(h.num_slots), int(h.max_reports)
    if num_slots > MAX_SLOTS or max_reports > MAX_REPORTS:
        raise StateError(f"{source}: bad state ({num_slots} slots, {max_reports} reports)")
    for name, offset, count, stride in (
            ("slots", int(h.slots_offset), num_slots, SLOT_SIZE),
            ("reports", int(h.reports_offset), max_reports, REPORT_SIZE)):
        if offset % 8 or offset < HEADER_SIZE or offset + count * stride > total:
            raise StateError(f"{source}: bad state ({name} at {offset}, {count} of {stride} "
                             f"bytes, do not fit in {total} bytes after the header)")
    if int(h.module_size) != MODULE_SIZE:
        raise StateVersionError(f"{source}: state layout differs from this kfence_py's")
    max_modules, num_modules = int(h.max_modules), int(h.num_modules)
    modules, paths, paths_size = int(h.modules_offset), int(h.paths_offset), int(h.paths_size)
    if max_modules > MAX_MODULES or num_modules > max_modules or paths_size > MODULE_PATHS:
        raise StateError(f"{source}: bad state ({num_modules} of {max_modules} modules, "
                         f"{paths_size} bytes of paths)")
    if modules % 8 or modules < HEADER_SIZE or modules + max_modules * MODULE_SIZE > total \
            or paths < HEADER_SIZE or paths + paths_size > total:
        raise StateError(f"{source}: bad state (the module table at {modules} and its paths "
                         f"at {paths} do not fit in {total} bytes after the header)")
    slots, reports = int(h.slots_offset), int(h.reports_offset)
    del h
    _check_modules(view, source, modules, num_modules, paths, paths_size)
    _check_enum(source, "slot state",
                _column(view, slots, num_slots, SLOT_SIZE, _SLOT["state"]), SLOT_STATES)
    _check_enum(source, "slot cache",
                _column(view, slots, num_slots, SLOT_SIZE, _SLOT["cache"]), CACHES)
    _check_enum(source, "report kind",
                _column(view, reports, max_reports, REPORT_SIZE, _REPORT["kind"]), BUG_KINDS)
    _check_enum(source, "report access",
                _column(view, reports, max_reports, REPORT_SIZE, _REPORT["access"]), ACCESSES)
    _check_enum(source, "report detail",
                _column(view, reports, max_reports, REPORT_SIZE, _REPORT["detail"]), DETAILS)
    _check_enum(source, "report deallocator",
                _column(view, reports, max_reports, REPORT_SIZE, _REPORT["dealloc"]), FAMILIES)
    obj = _REPORT["object"]
    _check_enum(source, "reported slot state",
                _column(view, reports, max_reports, REPORT_SIZE, obj + _SLOT["state"]),
                SLOT_STATES)
    _check_enum(source, "reported slot cache",
                _column(view, reports, max_reports, REPORT_SIZE, obj + _SLOT["cache"]), CACHES)
    index = _column(view, reports, max_reports, REPORT_SIZE, _REPORT["slot"], "i")
    bad = next((i for i in index if not -1 <= i < num_slots), None)
    if bad is not None:
        raise StateError(f"{source}: bad state (report of slot {bad}, the pool has "
                         f"{num_slots})")


def _check_modules(view: memoryview, source: str, offset: int, count: int, paths: int,
                   paths_size: int) -> None:
    """Every module entry in use names a path inside the paths, ended by a NUL."""
    table = ffi.from_buffer("struct kfence_module[]", view[offset:offset + count * MODULE_SIZE])
    names = view[paths:paths + paths_size]
    for i in range(count):
        m = table[i]
        at = int(m.path)
        if m.build_id_size > BUILD_ID_MAX or at >= paths_size or \
                bytes(names[at:]).find(b"\0") < 0:
            raise StateError(f"{source}: bad state (module {i}: path at {at} of {paths_size} "
                             f"bytes, build-id of {m.build_id_size} bytes)")


def _read_state(fd: int, source: str) -> bytearray:
    """The whole state in the open file fd, read into a buffer of its own."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{source}: not a regular file")
    if st.st_size == 0:
        raise StateError(f"{source}: empty state file")
    head = bytearray(min(st.st_size, HEADER_SIZE))
    _pread_all(fd, head, 0, source)
    if len(head) < HEADER_SIZE:
        raise StateError(f"{source}: truncated state ({st.st_size} bytes, "
                         f"the header is {HEADER_SIZE})")
    total = int(ffi.from_buffer("struct kfence_state *", head).total_size)
    if total > min(st.st_size, MAX_STATE_SIZE) or total < HEADER_SIZE:
        # checked again (with the reason) on the buffer, which is all that is trusted
        check_layout(head, source)
        raise StateError(f"{source}: truncated state ({st.st_size} of {total} bytes)")
    buffer = bytearray(total)
    _pread_all(fd, buffer, 0, source)
    return buffer


def _pread_all(fd: int, buffer: bytearray, offset: int, source: str) -> None:
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise StateError(f"{source}: {exc.strerror}") from None
        if n == 0:
            raise StateError(f"{source}: truncated state (the file ended at {offset + done} "
                             f"of {offset + len(view)} bytes)")
        done += n


@contextmanager
def _state_fd(path: Path, flags: int) -> Iterator[int]:
    """A descriptor of a state file, never through a link or a blocking FIFO."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError as exc:
        raise StatePermissionError(f"{path}: {exc.strerror}") from None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def write_control(path: str | os.PathLike[str], values: Mapping[str, int]) -> None:
    """Write runtime options (by name: the control block's fields) into a state file.

    The process maps the file shared, so it sees the change on its next
    sampling decision.  The file is checked first, as a reader would.
    """
    path = Path(path)
    with _state_fd(path, os.O_RDWR) as fd:
        try:
            check_layout(_read_state(fd, str(path)), str(path))
            for name, value in values.items():
                data = _U32.pack(value)
                if os.pwrite(fd, data, CONTROL_OFFSET + CONTROL_FIELDS[name]) != len(data):
                    raise StateError(f"{path}: short write to the control block")
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror}") from None


def _note(field: Any) -> str:
    return ffi.string(field).decode(errors="replace")


def _stack(st: Any) -> tuple[int, ...]:
    return tuple(st.pc[i] for i in range(min(st.depth, STACK_MAX)))


class StateView:
    """Typed views over one state mapping.  Keep it open while reading."""

    def __init__(self, buffer: Any, *, source: str, keepalive: Any = None) -> None:
        self.source = source
        self._keepalive = keepalive
        check_layout(buffer, source)
        self._base = ffi.from_buffer(buffer)
        # A pointer that keeps the buffer alive: StateView.open(p).header stays valid.
        self.header = ffi.from_buffer("struct kfence_state *", buffer)
        h = self.header
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
    def open(cls, path: str | os.PathLike[str]) -> StateView:
        """A copy of a state file, checked; it holds no descriptor."""
        path = Path(path)
        with _state_fd(path, os.O_RDONLY) as fd:
            buffer = _read_state(fd, str(path))
        return cls(buffer, source=str(path), keepalive=buffer)

    # --- reading -----------------------------------------------------------

    def counter(self, index: int) -> int:
        return int(self.header.counters[index])

    def control(self) -> dict[str, int]:
        """The runtime options in force (the control block), by option name."""
        c = self.header.control
        return {name: int(getattr(c, name)) for name in runtime_options()}

    def set_control(self, values: Mapping[str, int]) -> None:
        """Change runtime options (by option name) in this view's own memory."""
        for name, value in values.items():
            setattr(self.header.control, name, value)

    def stats(self) -> Stats:
        h = self.header
        busy = sum(1 for i in range(h.num_slots) if self.slots[i].state == lib.KFENCE_SLOT_BUSY)
        return Stats(pid=h.pid, pool_size=h.num_slots, zombie_allocations=busy,
                     control=self.control(),
                     counters=tuple(self.counter(c.index) for c in COUNTERS))

    def _object(self, index: int, slot: Any) -> ObjectInfo:
        freed = slot.free_tid != 0
        return ObjectInfo(
            index=index, state=SLOT_STATES[slot.state],
            address=slot.addr, size=slot.size, cache=CACHES[slot.cache],
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

    def modules(self) -> list[Module]:
        """The module table: each executable file mapping a recorded stack reached.

        Entries caught half-written in a running process (no range yet) are
        left out.
        """
        h = self.header
        table = ffi.cast("struct kfence_module *", self._base + h.modules_offset)
        paths = self._base + h.paths_offset
        out = []
        for i in range(h.num_modules):
            m = table[i]
            if m.end <= m.start:
                continue
            path = ffi.string(paths + m.path).decode(errors="replace").removesuffix(DELETED)
            build_id = bytes(ffi.buffer(m.build_id, m.build_id_size)).hex() or None
            out.append(Module(start=int(m.start), end=int(m.end), bias=int(m.bias), path=path,
                              build_id=build_id))
        return out

    def module_table(self) -> ModuleTable:
        return ModuleTable(self.modules())

    def reports(self) -> list[ReportRecord]:
        """The recent reports still in the ring, oldest first."""
        h = self.header
        out = []
        for i in range(h.max_reports):
            r = self._reports[i]
            if r.sequence == 0:
                continue
            out.append(ReportRecord(
                sequence=r.sequence, kind=BUG_KINDS[r.kind].name,
                access=ACCESSES[r.access], address=r.addr, distance=r.distance,
                thread=r.tid, time=r.ns / 1e9, stack=_stack(r.stack),
                object=self._object(r.slot, r.object) if r.slot >= 0 else None,
                corrupted=bytes(ffi.buffer(r.corrupted, CORRUPTION_WINDOW)),
                corrupted_mask=r.corrupted_mask, repeats=r.repeats,
                detail=r.detail, dealloc=r.dealloc, detail_value=r.detail_value,
            ))
        return sorted(out, key=lambda rec: rec.sequence)
