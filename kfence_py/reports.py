"""The report grammar: the text libkfence.so prints for a bug, and its parser.

A report stands between two rules.  Its title is ``BUG: KFENCE: <kind>[
<access>] in <function>``, its first line starts with the kind's headline
(``Out-of-bounds read at 0x... (3B right of kfence-#7):``), for some kinds a
sentence saying why (contract.DETAILS: ``The object was allocated by operator
new[] and is freed by free().``), then the frames (`` #i 0xpc in symbol
(module+0xoffset)``), the object
(``kfence-#7: 0x...-0x..., size=32, cache=malloc``) and its ``allocated by`` /
``freed by`` stacks.  The kinds, their headlines and which of them have an
access come from the library (contract.BUG_KINDS); this module owns the rest,
for every reader and writer of report text in the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .contract import ACCESSES, BUG_KINDS, REPORT_RULE, REPORT_TITLE

RULE = REPORT_RULE  # the line before and after each report
TITLE_PREFIX = REPORT_TITLE
# Kinds of a fault: frame #0 of their stack is the faulting instruction, not a return address.
FAULT_KINDS = frozenset(kind.name for kind in BUG_KINDS if kind.with_access)


def _either(words: list[str]) -> str:
    """A regex alternative of words, longest first."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_KIND = _either([kind.name for kind in BUG_KINDS])
_ACCESS = _either([access for access in ACCESSES if access])
_HEADLINE = _either([kind.headline.rstrip() for kind in BUG_KINDS])

TITLE = re.compile(
    rf"^{re.escape(TITLE_PREFIX)}(?P<kind>{_KIND})(?: (?P<access>{_ACCESS}))? in "
    r"(?P<where>\S.*?)\s*$")  # a demangled C++ name has spaces
FRAME = re.compile(
    r"^ #(?P<index>\d+) (?P<pc>0x[0-9a-f]+) in (?P<symbol>\S+) "
    r"\((?P<module>.*)\+(?P<offset>0x[0-9a-f]+)\)$")
OBJECT = re.compile(
    r"^kfence-#(?P<index>\d+): (?P<start>0x[0-9a-f]+)-(?P<end>0x[0-9a-f]+), "
    r"size=(?P<size>\d+), cache=(?P<cache>\S+)")
BY = re.compile(r"^(?P<what>allocated|freed) by thread (?P<tid>\d+) at (?P<time>[\d.]+)s:")
WHAT = re.compile(
    rf"^(?:{_HEADLINE})(?: (?:{_ACCESS}))?(?: at)? (?P<addr>0x[0-9a-f]+)"
    r"(?: \[(?P<bytes>[^\]]*)\])?"
    r"(?: \((?:(?P<dist>\d+)B (?P<side>left|right) of |in )kfence-#(?P<obj>\d+)\))?:$")


def title(kind: str, access: str | None) -> str:
    """What a report's title says of the bug: the kind, and the access of a fault."""
    return f"{kind} {access}" if access else kind


def title_line(kind: str, access: str | None, where: str) -> str:
    """A report's title line."""
    return f"{TITLE_PREFIX}{title(kind, access)} in {where}"


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

    kind: str  # a contract.BUG_KINDS name: out-of-bounds, use-after-free, ...
    access: str | None  # read or write
    location: str  # "function+0xoff" in the header
    address: int | None = None
    object_index: int | None = None
    distance: int | None = None  # out-of-bounds: <0 left of the object, >0 right of it
    explanation: str | None = None  # the sentence under the first line (contract.DETAILS)
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
                 match["module"], int(match["offset"], 16))


def _parse_one(lines: list[str]) -> Report | None:
    header = next((m for m in map(TITLE.match, lines) if m), None)
    if header is None:
        return None
    report = Report(kind=header["kind"], access=header["access"], location=header["where"],
                    text="\n".join([RULE, *lines, RULE]) + "\n")
    target, python, after_what = report.stack, None, False
    for line in lines:
        if python is not None and line.startswith("  File "):
            python.append(line.strip())
            continue
        if after_what and line and not FRAME.match(line):
            report.explanation = line  # the line between the first line and the stack
        after_what = False
        if m := WHAT.match(line):
            after_what = True
            report.address = int(m["addr"], 16)
            report.corrupted = m["bytes"].strip() if m["bytes"] else None
            if m["obj"]:
                report.object_index = int(m["obj"])
            if m["dist"]:
                report.distance = int(m["dist"]) * (-1 if m["side"] == "left" else 1)
            target = report.stack
        elif m := FRAME.match(line):
            target.append(_frame(m))
        elif m := OBJECT.match(line):
            report.object_index = int(m["index"])
            report.object_start = int(m["start"], 16)
            report.size = int(m["size"])
            report.cache = m["cache"]
        elif m := BY.match(line):
            if m["what"] == "allocated":
                report.alloc_thread, target = int(m["tid"]), report.alloc_stack
                python = report.alloc_python
            else:
                report.free_thread, target = int(m["tid"]), report.free_stack
                python = report.free_python
    return report


def parse_reports(text: str) -> list[Report]:
    """Every report in text (other output around them is ignored)."""
    reports: list[Report] = []
    current: list[str] | None = None
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
