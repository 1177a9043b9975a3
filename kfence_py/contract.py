"""The contract of csrc/kfence_state.h, read from libkfence.so once.

The state version, the sizes, every enum with its names, the bug kinds and
the counters are stated in C only; this module asks the library for them
(cffi gives the enum constants, the ``kfence_*_name`` and ``kfence_*_desc``
functions the names).  So a counter or a bug kind added in C reaches the
state checks, the stats, the metrics and the report grammar with no Python
edit.  The option table (csrc/options.inc) is options.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._native import lib, text

STATE_VERSION: int = lib.KFENCE_STATE_VERSION
STACK_MAX: int = lib.KFENCE_STACK_MAX  # frames per recorded stack
MAX_REPORTS: int = lib.KFENCE_MAX_REPORTS  # the report ring
# The line before and after a report, and its title's start ("BUG: KFENCE: ").
REPORT_RULE: str = text(lib.kfence_report_words().rule)
REPORT_TITLE: str = text(lib.kfence_report_words().title)
CORRUPTION_WINDOW: int = lib.KFENCE_CORRUPTION_WINDOW  # bytes kept of a corrupted canary


def _names(name_of: Callable[[int], Any], count: int) -> tuple[str, ...]:
    return tuple(text(name_of(i)) for i in range(count))


# Each enum's names, indexed by its raw value: a value outside a table is a bad state.
SLOT_STATES = _names(lib.kfence_slot_state_name, lib.KFENCE_SLOT_STATE_COUNT)
ACCESSES: tuple[str | None, ...] = tuple(
    name or None for name in _names(lib.kfence_access_name, lib.KFENCE_ACCESS_KINDS))
CACHES = _names(lib.kfence_cache_name, lib.KFENCE_CACHE_KINDS)
PLACEMENTS = _names(lib.kfence_placement_name, lib.KFENCE_PLACEMENT_KINDS)


@dataclass(frozen=True)
class BugKind:
    """One kind of bug (enum kfence_bug)."""

    index: int
    name: str  # follows "BUG: KFENCE: " in a report's title
    headline: str  # starts the report's first line ("Out-of-bounds ")
    # A fault: it made a read or a write, named after the kind, and frame #0 of
    # its stack is the faulting instruction itself, not a return address.
    with_access: bool


def _bug_kind(i: int) -> BugKind:
    d = lib.kfence_bug_desc(i)
    return BugKind(i, text(d.name), text(d.headline), bool(d.with_access))


BUG_KINDS: tuple[BugKind, ...] = tuple(_bug_kind(i) for i in range(lib.KFENCE_BUG_KINDS))


@dataclass(frozen=True)
class Family:
    """A family of allocation functions (enum kfence_family): what allocates, what frees."""

    index: int
    allocator: str  # "operator new[]"
    deallocator: str  # "operator delete[]"


def _family(i: int) -> Family:
    d = lib.kfence_family_desc(i)
    return Family(i, text(d.allocator), text(d.deallocator))


FAMILIES: tuple[Family, ...] = tuple(_family(i) for i in range(lib.KFENCE_FAMILY_KINDS))
# The family of each cache, by the cache's index.
CACHE_FAMILIES: tuple[Family, ...] = tuple(
    FAMILIES[lib.kfence_cache_family(i)] for i in range(lib.KFENCE_CACHE_KINDS))


@dataclass(frozen=True)
class Detail:
    """Why a report is what it is (enum kfence_detail): one sentence under its first line.

    The text has fields, filled the same way by the library and by explain():
    {allocator}, {deallocator}, {value}, {size} and {module}.
    """

    index: int
    name: str  # "" for none
    text: str

    def explain(self, *, allocator: str | None = None, deallocator: str | None = None,
                value: int = 0, size: int | None = None, module: str | None = None) -> str:
        return self.text.format(allocator=allocator or "?", deallocator=deallocator or "?",
                                value=value, size=size if size is not None else 0,
                                module=module or "?")


def _detail(i: int) -> Detail:
    d = lib.kfence_detail_desc(i)
    return Detail(i, text(d.name), text(d.text))


DETAILS: tuple[Detail, ...] = tuple(_detail(i) for i in range(lib.KFENCE_DETAIL_KINDS))


@dataclass(frozen=True)
class Counter:
    """One counter of the state (enum kfence_counter)."""

    index: int
    name: str  # its line in KFENCE's stats text ("total bugs")
    type: str  # GAUGE or COUNTER
    metric: str  # the Prometheus family is kfence_<metric>
    label: str  # reason="<label>" in that family; "" when it has no label
    help: str

    @property
    def key(self) -> str:
        """Its name in Python and JSON: the label in its family, else its stats line.

        With spaces as underscores: "total_bugs", and "too_large" for the
        reason of a skipped allocation.
        """
        return (self.label or self.name).replace(" ", "_")


def _counter(i: int) -> Counter:
    d = lib.kfence_counter_desc(i)
    return Counter(i, text(d.name), text(d.type), text(d.metric), text(d.label), text(d.help))


COUNTERS: tuple[Counter, ...] = tuple(_counter(i) for i in range(lib.KFENCE_COUNTER_COUNT))
