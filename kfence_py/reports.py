"""Parse KFENCE-format reports (as libkfence.so prints them) into records."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
    target = report.stack
    for line in lines:
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
            else:
                report.free_thread, target = int(m["tid"]), report.free_stack
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
