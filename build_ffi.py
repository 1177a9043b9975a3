"""The cffi builder: the ``kfence_py._kfence`` module over libkfence.so.

Declarations come from the public C headers in csrc/, run through the C
preprocessor (with KFENCE_CDEF defined: no system headers), so the C side and
the Python side cannot drift apart: every enum, size and struct of the
contract is written once, in C.  The module
links libkfence.so and finds it next to itself ($ORIGIN): a process that is
also preloaded with the library gets one pool, one handler, one set of counters.
"""

import os
import shlex
import subprocess
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent / "csrc"


def cdef_text() -> str:
    """The public headers, preprocessed, as cffi's cdef accepts them."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    cmd = [*cc, "-E", "-P", "-nostdinc", "-DKFENCE_CDEF", f"-I{CSRC}", str(CSRC / "kfence.h")]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


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
