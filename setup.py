"""Build steps that pyproject.toml cannot express: libkfence.so and the demo.

libkfence.so is a plain C shared library (no Python in it) used both by
LD_PRELOAD and by the cffi module, so it is compiled here with the C compiler
directly, before the cffi extension that links it. The version, written once
in kfence_py/__init__.py, is compiled into it (``kfence_version()``).
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
    # A section per variable, sorted by alignment at the link (LDFLAGS): the small
    # ones start-up touches end up together, not between big buffers (each page
    # first touched is a page fault, paid by every process).
    "-fdata-sections",
]
LDFLAGS = [
    "-shared",
    "-Wl,-soname,libkfence.so",
    # Never unloaded: our SIGSEGV handler and atfork hooks must outlive a dlclose().
    "-Wl,-z,nodelete",
    "-Wl,-z,now",
    "-Wl,--sort-section=alignment",
]


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def without_rpath(command: list[str]) -> list[str]:
    """A link command less its run-time search paths (``-Wl,-rpath,DIR``, ``-Wl,-R,DIR``, ...).

    Python's own link command can carry the run path of its build (pyenv's has
    ``-Wl,-rpath,<prefix>/lib``): an extension needs no libpython, and a wheel
    must not name a directory of the machine that built it. The extensions add
    their own ``$ORIGIN`` afterwards, per extension.
    """
    kept: list[str] = []
    value_next = False  # "-Wl,-rpath" whose directory is in the next -Wl argument
    for arg in command:
        if not arg.startswith("-Wl,"):
            kept.append(arg)
            continue
        parts = arg.split(",")[1:]
        if value_next and parts:
            parts, value_next = parts[1:], False
        rest: list[str] = []
        i = 0
        while i < len(parts):
            part = parts[i]
            if part in ("-rpath", "--rpath", "-R"):
                value_next = i + 1 == len(parts)
                i += 2
                continue
            if not part.startswith(("-rpath=", "--rpath=")):
                rest.append(part)
            i += 1
        if rest:
            kept.append(",".join(["-Wl", *rest]))
    return kept


class BuildNative(build_ext):
    """Compile libkfence.so and the demo program next to the cffi module."""

    def run(self) -> None:
        outdir = Path(self.get_ext_fullpath("kfence_py._kfence")).parent
        outdir.mkdir(parents=True, exist_ok=True)
        lib = outdir / "libkfence.so"
        sources = [str(CSRC / s) for s in LIB_SOURCES]
        version = self.distribution.get_version()
        self._cc([*CFLAGS, f'-DKF_VERSION="{version}"', *sources, *LDFLAGS,
                  "-o", str(lib), "-ldl", "-lpthread"])
        demo = outdir / "kfence-demo"
        self._cc(["-O0", "-g", str(CSRC / "demo.c"), "-o", str(demo)])
        self._native_outputs = [str(lib), str(demo)]
        for ext in self.extensions:
            ext.library_dirs.append(str(outdir))
        super().run()

    def build_extensions(self) -> None:
        for name in ("linker_so", "linker_so_cxx"):
            command = getattr(self.compiler, name, None)
            if command:
                self.compiler.set_executable(name, without_rpath(command))
        super().build_extensions()

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
