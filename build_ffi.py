"""The cffi builder: the ``kfence_py._kfence`` module over libkfence.so.

Declarations come from the plain C headers in csrc/ (minus their preprocessor
lines), so the C side and the Python side cannot drift apart.  The module
links libkfence.so and finds it next to itself ($ORIGIN): a process that is
also preloaded with the library gets one pool, one handler, one set of counters.
"""

from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent / "csrc"
HEADERS = ("kfence_state.h", "kfence.h")


def cdef_text() -> str:
    """The public headers as cffi's cdef accepts them."""
    lines = []
    for name in HEADERS:
        text = (CSRC / name).read_text()
        lines += [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "kfence_py._kfence",
    '#include "kfence.h"',
    include_dirs=[str(CSRC)],
    libraries=["kfence"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
