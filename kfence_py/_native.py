"""The binding to libkfence.so: one place that loads it and checks its results."""

from __future__ import annotations

from pathlib import Path

try:
    from ._kfence import ffi, lib
except ImportError as exc:  # an unbuilt source tree, and no kfence-py installed (_checkout)
    raise ImportError(
        f"kfence_py's native part is not built in {Path(__file__).parent} and no other "
        "kfence-py is installed: `pip install .`, "
        "or build it in place with `python setup.py build_ext --inplace`") from exc

__all__ = ["DEMO_PATH", "LIB_PATH", "ffi", "lib", "text"]

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_PATH = PACKAGE_DIR / "libkfence.so"
DEMO_PATH = PACKAGE_DIR / "kfence-demo"


def text(cstr) -> str:
    """A C string from the library as str ("" for NULL)."""
    return ffi.string(cstr).decode() if cstr != ffi.NULL else ""
