"""Parse KFENCE-format reports (as libkfence.so prints them) into records."""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .state import ReportRecord

RULE = "=" * 66

_HEADER = re.compile(
    r"^BUG: KFENCE: (?P<kind>out-of-bounds|use-after-free|memory corruption|invalid free"
    r"|invalid|memory leak)(?: (?P<access>read|write))? in (?P<where>\S+)")
_FRAME = re.compile(
    r"^ #(?P<index>\d+) (?P<pc>0x[0-9a-f]+) in (?P<symbol>\S+) "
    r"\((?P<module>.*)\+(?P<module_offset>0x[0-9a-f]+)\)$")
_OBJECT = re.compile(
    r"^kfence-#(?P<index>\d+): (?P<start>0x[0-9a-f]+)-(?P<end>0x[0-9a-f]+), "
    r"size=(?P<size>\d+), cache=(?P<cache>\S+)")
_BY = re.compile(r"^(?P<what>allocated|freed) by thread (?P<tid>\d+) at (?P<time>[\d.]+)s:")
_WHAT = re.compile(
    r"^(?:Out-of-bounds|Use-after-free|Invalid|Corrupted memory|Invalid free of"
    r"|Unreferenced object)(?: (?:read|write))?(?: at)? (?P<addr>0x[0-9a-f]+)"
    r"(?: \[(?P<bytes>[^\]]*)\])?"
    r"(?: \((?:(?P<dist>\d+)B (?P<side>left|right) of |in )kfence-#(?P<obj>\d+)\))?:$")


@dataclass(frozen=True)
class Frame:
    """One stack frame: module+offset with the nearest symbol."""

    pc: int
    symbol: str | None  # "name+0xoff", None when unknown
    module: str
    module_offset: int

    @property
    def function(self) -> str | None:
        return self.symbol.rsplit("+", 1)[0] if self.symbol else None


@dataclass
class Report:
    """One report; fields that do not apply to its kind stay None."""

    kind: str  # out-of-bounds, use-after-free, memory corruption, invalid, invalid free, ...
    access: str | None  # read or write
    location: str  # "function+0xoff" in the header
    address: int | None = None
    object_index: int | None = None
    distance: int | None = None  # out-of-bounds: <0 left of the object, >0 right of it
    object_start: int | None = None
    size: int | None = None
    cache: str | None = None
    corrupted: str | None = None  # the [ ... ] window of a corruption report
    stack: list[Frame] = field(default_factory=list)
    alloc_thread: int | None = None
    alloc_stack: list[Frame] = field(default_factory=list)
    free_thread: int | None = None
    free_stack: list[Frame] = field(default_factory=list)
    alloc_python: list[str] = field(default_factory=list)  # "File ..., line N, in f" lines
    free_python: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def function(self) -> str:
        """The function named in the header, without its offset."""
        return self.location.rsplit("+", 1)[0]


def _frame(match: re.Match[str]) -> Frame:
    symbol = match["symbol"]
    return Frame(int(match["pc"], 16), None if symbol == "<unknown>" else symbol,
                 match["module"], int(match["module_offset"], 16))


def _parse_one(lines: list[str]) -> Report | None:
    header = next((m for m in map(_HEADER.match, lines) if m), None)
    if header is None:
        return None
    report = Report(kind=header["kind"], access=header["access"], location=header["where"],
                    text="\n".join([RULE, *lines, RULE]) + "\n")
    target, python = report.stack, None
    for line in lines:
        if python is not None and line.startswith("  File "):
            python.append(line.strip())
            continue
        if m := _WHAT.match(line):
            report.address = int(m["addr"], 16)
            report.corrupted = m["bytes"].strip() if m["bytes"] else None
            if m["obj"]:
                report.object_index = int(m["obj"])
            if m["dist"]:
                report.distance = int(m["dist"]) * (-1 if m["side"] == "left" else 1)
            target = report.stack
        elif m := _FRAME.match(line):
            target.append(_frame(m))
        elif m := _OBJECT.match(line):
            report.object_index = int(m["index"])
            report.object_start = int(m["start"], 16)
            report.size = int(m["size"])
            report.cache = m["cache"]
        elif m := _BY.match(line):
            if m["what"] == "allocated":
                report.alloc_thread, target = int(m["tid"]), report.alloc_stack
                python = report.alloc_python
            else:
                report.free_thread, target = int(m["tid"]), report.free_stack
                python = report.free_python
    return report


def parse_reports(text: str) -> list[Report]:
    """Every report in text (other output around them is ignored)."""
    reports, current = [], None
    for line in text.splitlines():
        if line == RULE:
            if current is None:
                current = []
            else:
                if (report := _parse_one(current)) is not None:
                    reports.append(report)
                current = None
        elif current is not None:
            current.append(line)
    return reports


# --- Records from the shared state, rendered for people -------------------


class _DlInfo(ctypes.Structure):
    _fields_: ClassVar = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                          ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def _dladdr() -> Any:
    fn = ctypes.CDLL(None).dladdr
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    return fn


def describe_pc(pc: int) -> str:
    """``sym+0xoff (module+0xoff)`` for an address of this process (dladdr)."""
    info = _DlInfo()
    if not _dladdr()(pc, ctypes.byref(info)) or not info.dli_fname:
        return f"{pc:#x}"
    module = info.dli_fname.decode(errors="replace")
    where = f"({module}+{pc - (info.dli_fbase or 0):#x})"
    if info.dli_sname and info.dli_saddr:
        return f"{info.dli_sname.decode(errors='replace')}+{pc - info.dli_saddr:#x} {where}"
    return f"<unknown> {where}"


def format_record(record: ReportRecord, *, symbolize: bool = True) -> str:
    """A report record as text close to the printed report (this process's addresses)."""
    def stack(pcs: tuple[int, ...]) -> list[str]:
        return [f" #{i} {pc:#014x} in {describe_pc(pc) if symbolize else '?'}"
                for i, pc in enumerate(pcs)]

    access = f" {record.access}" if record.access else ""
    where = describe_pc(record.stack[0]).split()[0] if record.stack and symbolize else "<unknown>"
    lines = [RULE, f"BUG: KFENCE: {record.kind}{access} in {where}", "",
             f"at {record.address:#x}"]
    lines += stack(record.stack)
    obj = record.object
    if obj is not None:
        lines += ["", f"kfence-#{obj.index}: {obj.address:#x}, size={obj.size}, cache={obj.cache}",
                  "", f"allocated by thread {obj.alloc_thread} at {obj.alloc_time:.6f}s:"]
        lines += stack(obj.alloc_stack) + obj.alloc_python.splitlines()
        if obj.free_thread is not None:
            lines += ["", f"freed by thread {obj.free_thread} at {obj.free_time:.6f}s:"]
            lines += stack(obj.free_stack) + obj.free_python.splitlines()
    lines.append(RULE)
    return "\n".join(lines) + "\n"
