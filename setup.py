"""Build steps that pyproject.toml cannot express: libkfence.so and the demo.

libkfence.so is a plain C shared library (no Python in it) used both by
LD_PRELOAD and by the cffi module, so it is compiled here with the C compiler
directly, before the cffi extension that links it.
"""

import os
import shlex
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
# Every C file in csrc/ is the library's, except the demo program and the CPython glue.
NOT_LIB = {"demo.c", "pyext.c"}
LIB_SOURCES = sorted(p.name for p in CSRC.glob("*.c") if p.name not in NOT_LIB)
CFLAGS = [
    "-std=gnu11", "-O2", "-g", "-fPIC", "-Wall", "-Wextra",
    # Calls into glibc through the GOT: no PLT stub on the hot path.
    "-fno-plt",
    # We define malloc and friends: the compiler must not assume their semantics.
    "-fno-builtin-malloc", "-fno-builtin-calloc", "-fno-builtin-realloc", "-fno-builtin-free",
]
LDFLAGS = [
    "-shared",
    "-Wl,-soname,libkfence.so",
    # Never unloaded: our SIGSEGV handler and atfork hooks must outlive a dlclose().
    "-Wl,-z,nodelete",
    "-Wl,-z,now",
]


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


class BuildNative(build_ext):
    """Compile libkfence.so and the demo program next to the cffi module."""

    def run(self) -> None:
        outdir = Path(self.get_ext_fullpath("kfence_py._kfence")).parent
        outdir.mkdir(parents=True, exist_ok=True)
        lib = outdir / "libkfence.so"
        sources = [str(CSRC / s) for s in LIB_SOURCES]
        self._cc([*CFLAGS, *sources, *LDFLAGS, "-o", str(lib), "-ldl", "-lpthread"])
        demo = outdir / "kfence-demo"
        self._cc(["-O0", "-g", str(CSRC / "demo.c"), "-o", str(demo)])
        self._native_outputs = [str(lib), str(demo)]
        for ext in self.extensions:
            ext.library_dirs.append(str(outdir))
        super().run()

    def _cc(self, args: list[str]) -> None:
        cmd = [*compiler(), *args]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), *getattr(self, "_native_outputs", [])]


# CPython-specific glue cffi cannot express (a buffer type, PyMem hooks); links libkfence.so.
PYEXT = Extension(
    "kfence_py._pyext",
    sources=["csrc/pyext.c"],
    include_dirs=["csrc"],
    libraries=["kfence"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"],
)

setup(
    ext_modules=[PYEXT],
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildNative},
)
