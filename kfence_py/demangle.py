"""C++ names as a person reads them, wherever a report is rendered.

The library prints symbols as the ELF tables hold them (``_ZN3app5Cache4dropEv``):
demangling is not async-signal-safe (``__cxa_demangle`` allocates), and a
report may be printed from the SIGSEGV handler.  Everything that renders a
report in Python (``kfence-py run``, ``reports``, ``symbolize``, the JSON
records, the pytest plugin) passes names through here.  The demangler is the
C++ runtime's own, through cxxfilt.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

log = logging.getLogger("kfence_py")


@functools.cache
def _demangler() -> Callable[[str], str] | None:
    try:
        import cxxfilt
    except Exception as exc:  # no C++ runtime to load: names stay as printed
        log.warning("C++ names are not demangled: %s", exc)
        return None
    demangle: Callable[[str], str] = cxxfilt.demangle
    return demangle


@functools.lru_cache(maxsize=4096)
def demangle(name: str) -> str:
    """name demangled if it is a mangled C++ name; anything else unchanged."""
    if not name.startswith("_Z"):
        return name
    demangler = _demangler()
    if demangler is None:
        return name
    try:
        return demangler(name)
    except Exception:  # not a valid mangling after all, or no libstdc++ found
        return name


def demangle_symbol(symbol: str | None) -> str | None:
    """A "name+0xoff" symbol (or a bare name) with its name demangled."""
    if not symbol:
        return symbol
    name, plus, offset = symbol.rpartition("+")
    if plus and offset.startswith("0x"):
        return f"{demangle(name)}+{offset}"
    return demangle(symbol)
