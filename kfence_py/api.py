"""kfence_py from Python: guarded buffers, enabling in process, reading state.

Everything here uses the one libkfence.so of the process: the preloaded copy
when there is one, else the copy the package links, started on demand.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import tracemalloc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import _pyext
from ._native import ffi, lib, text
from .contract import PLACEMENTS
from .options import format_options, option_specs, runtime_options
from .state import ObjectInfo, ReportRecord, StateView, Stats

log = logging.getLogger("kfence_py")

# alloc() runs per buffer: what it checks against is computed once.
_PAGE = mmap.PAGESIZE
_PLACEMENT_INDEX = {name: i for i, name in enumerate(PLACEMENTS)}


class KfenceError(Exception):
    """kfence_py could not do what was asked."""


class PoolExhausted(KfenceError, MemoryError):
    """Every pool slot holds a live guarded object."""


class GuardedBuffer(_pyext.GuardedBufferBase):
    """One guarded object: a page of its own, guard pages on both sides.

    Supports the buffer protocol (memoryview, ``bytes(buf)``,
    ``numpy.frombuffer``), writable.  Each view counts as an export and
    ``free()`` refuses while one is alive, so Python code cannot touch freed
    memory; C code that kept the address is reported when it does.
    """

    def as_ctypes(self) -> ctypes.Array[ctypes.c_char]:
        """A ``c_char`` array over the object (an export until it is dropped)."""
        return (ctypes.c_char * self.size).from_buffer(self)

    def as_cffi(self) -> Any:
        """A cffi ``char[]`` over the object (an export until ``ffi.release``)."""
        return ffi.from_buffer("char[]", self, require_writable=True)

    def __enter__(self) -> GuardedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.freed:
            self.free()

    def __repr__(self) -> str:
        if self.freed:
            return f"<GuardedBuffer size={self.size} freed>"
        return f"<GuardedBuffer size={self.size} at {self.address:#x}>"


def _view() -> StateView:
    view = StateView.in_process()
    if view is None:
        raise KfenceError("kfence_py is not running in this process: call kfence_py.enable()")
    return view


def _start(options: Mapping[str, object]) -> None:
    # KFENCE_OPTIONS first, the arguments after it: later keys win in the parser.
    text_options = ":".join(filter(None, [os.environ.get("KFENCE_OPTIONS", ""),
                                          format_options(options)]))
    if lib.kfence_init(text_options.encode()) != 0:
        raise KfenceError("kfence_py could not start in this process "
                          "(the reason is on stderr, after 'kfence:'; is enabled=0 set?)")


def enable(*, python_allocator: bool = False, **options: object) -> None:
    """Start sampling in this process, with the options of KFENCE_OPTIONS.

    When the library is already running (preloaded, or enabled before), the
    runtime options (those of the control block: sample_interval, sample_rate,
    burst...) change at once and the others, fixed at start, are ignored with
    a warning; sampling is switched on unless enabled=0 is given.  With
    ``python_allocator=True`` CPython's own allocations are sampled too,
    through hooks installed once above the allocator in place: a running
    tracemalloc is restarted above them (its earlier traces are lost, with a
    warning), and in-process (libkfence.so not preloaded) they are refused,
    with a warning, over another tool's hooks, which could remove them.
    """
    format_options(options)  # ValueError for an unknown key or a bad value
    specs = option_specs()
    normalized = {k: specs[k].normalize(v) for k, v in options.items()}
    if not lib.kfence_is_initialized():
        _start(normalized)
    else:
        runtime = runtime_options()
        fixed = {k: v for k, v in normalized.items()
                 if k not in runtime and text(lib.kfence_option_value(k.encode())) != v}
        if fixed:
            log.warning("kfence_py is already running; options fixed at start are kept: %s",
                        ", ".join(f"{k}={v}" for k, v in fixed.items()))
        settings = {k: int(v) for k, v in normalized.items() if k in runtime and k != "enabled"}
        settings["enabled"] = int(normalized.get("enabled", "1"))  # last: the rest is in place
        _view().set_control(settings)
    if python_allocator:
        _sample_python_allocator()


_warned: set[str] = set()
_refused_below = False  # another tool's hooks were found below ours


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def _repair_python_hooks() -> bool:
    """Put our PyMem hooks back where another tool removed them; False if it cannot."""
    if _pyext.python_hooks() != "removed":
        return True
    repaired = _pyext.repair_python_hooks()
    if repaired:
        _warn_once("removed", "another tool removed kfence_py's hooks on CPython's allocator "
                   "(it restored the allocator it had saved before kfence_py.enable()); "
                   "reinstalled them in %d domain(s): guarded objects freed in between "
                   "went to an allocator that does not own them. Start such tools after "
                   "kfence_py.enable(), or preload libkfence.so (kfence-py run)", repaired)
    return _pyext.python_hooks() == "installed"


def _sample_python_allocator() -> None:
    """Install the PyMem hooks once, where nothing can remove them, and sample."""
    global _refused_below
    if _pyext.python_hooks() != "absent":
        if _repair_python_hooks():
            _pyext.set_python_sampling(True)
        return
    # tracemalloc (-X tracemalloc, PYTHONTRACEMALLOC, or started earlier) sits above
    # the allocator it saved and restores it at stop(), also at exit: that would take
    # our hooks out with it.  Restarted above ours, it restores ours instead.
    tracing = tracemalloc.is_tracing()
    if tracing and _refused_below:
        return  # looked below it already: not again, each look drops its traces
    limit = tracemalloc.get_traceback_limit()
    if tracing:
        tracemalloc.stop()
    installed = False
    try:
        name = _pyext.python_allocator_name()
        if name is None and not lib.kfence_is_interposing():
            # Another tool's hooks below ours could remove them at any time, and the
            # guarded objects would then reach glibc's free(), which aborts on them.
            _refused_below = True
            _warn_once("unknown", "CPython's allocator is hooked by another tool "
                       "(not CPython's own allocator): not sampling it in-process, as "
                       "that tool could remove kfence_py's hooks. Start such tools after "
                       "kfence_py.enable(), or preload libkfence.so (kfence-py run), "
                       "with which this is safe")
            return
        _pyext.set_python_sampling(True)
        installed = True
    finally:
        if tracing:
            tracemalloc.start(limit)
            _warn_once("tracemalloc", "tracemalloc was restarted above kfence_py's "
                       "allocator hooks (else tracemalloc.stop() would remove them): "
                       "traces of earlier allocations are lost" if installed else
                       "tracemalloc was restarted (kfence_py looked at the allocator "
                       "below it): traces of earlier allocations are lost")


def disable() -> None:
    """Stop sampling (malloc and CPython's allocator); guarded objects stay valid."""
    _pyext.set_python_sampling(False)
    view = StateView.in_process()
    if view is not None:
        view.header.control.enabled = 0


def is_enabled() -> bool:
    """True while allocations are being sampled in this process."""
    view = StateView.in_process()
    return bool(view is not None and view.header.control.enabled)


def python_allocator_sampled() -> bool:
    """True while CPython's allocator domains are sampled."""
    return bool(_pyext.python_sampling()) and _pyext.python_hooks() == "installed"


@contextmanager
def sampling(*, python_allocator: bool = True, **options: object) -> Iterator[None]:
    """Sample inside a with-block, restoring the sampling settings after it."""
    was_python = python_allocator_sampled()
    saved = _view().control() if lib.kfence_is_initialized() else None
    enable(python_allocator=python_allocator, **options)
    try:
        yield
    finally:
        if saved is not None:
            _view().set_control(saved)
        hooks_ok = _repair_python_hooks()
        _pyext.set_python_sampling(was_python and hooks_ok)


def alloc(size: int, *, placement: str = "right", zero: bool = True,
          align: int = 0) -> GuardedBuffer:
    """A guarded buffer of ``size`` bytes (1 to one page), whatever the sampling.

    placement "right" puts the end of the object against the guard page (an
    overflow faults), "left" its start (an underflow faults), "random" either.
    ``align`` (a power of two, 0 for the align option) applies to "right".
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if not 1 <= size <= _PAGE:
        raise ValueError(f"size must be 1..{_PAGE} (one page), not {size}")
    index = _PLACEMENT_INDEX.get(placement) if isinstance(placement, str) else None
    if index is None:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    if isinstance(align, bool) or not isinstance(align, int):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if align < 0 or align > _PAGE or align & (align - 1):
        raise ValueError(f"align must be 0 or a power of two up to {_PAGE}, not {align}")
    if not lib.kfence_is_initialized():
        _start({})
    try:
        return GuardedBuffer(size, index, align, bool(zero))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            slots = _view().header.num_slots
            raise PoolExhausted(f"all {slots} pool slots hold live objects: free some "
                                "GuardedBuffers or start with a larger num_objects") from None
        raise KfenceError(f"guarded allocation failed: {exc.strerror}") from None


def stats() -> Stats:
    """KFENCE's counters for this process."""
    return _view().stats()


def objects() -> list[ObjectInfo]:
    """Every pool slot that was ever used, with its stacks."""
    return _view().objects()


def reports() -> list[ReportRecord]:
    """The recent reports of this process, oldest first."""
    return _view().reports()
