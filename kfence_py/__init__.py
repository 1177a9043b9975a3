"""kfence_py: KFENCE for Linux userspace.

A sampling guard-page detector: a few sampled heap allocations get a page of
their own between inaccessible guard pages, so out-of-bounds accesses and
use-after-free fault at the guilty instruction and are reported with the
allocation and free stacks.
"""

from __future__ import annotations

from ._checkout import stand_aside_if_unbuilt

# First: an unbuilt source tree (a fresh clone on sys.path) loads the installed package instead.
stand_aside_if_unbuilt(__name__, __file__)

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._native import LIB_PATH, lib, text
from .api import (
    GuardedBuffer,
    KfenceError,
    PoolExhausted,
    alloc,
    disable,
    enable,
    is_enabled,
    objects,
    python_allocator_sampled,
    reports,
    sampling,
    stats,
)
from .protocol import MAX_CLIENTS
from .state import ObjectInfo, ReportRecord, StateError, Stats

if TYPE_CHECKING:
    from .server import StatsServer

# The one place the version is written: pyproject.toml reads it (setuptools' dynamic
# version) and setup.py compiles it into libkfence.so (kfence_version()).
__version__ = "0.1.0"
__all__ = [
    "GuardedBuffer",
    "KfenceError",
    "ObjectInfo",
    "PoolExhausted",
    "ReportRecord",
    "StateError",
    "Stats",
    "__version__",
    "alloc",
    "disable",
    "enable",
    "is_enabled",
    "lib_path",
    "native_version",
    "objects",
    "python_allocator_sampled",
    "reports",
    "sampling",
    "serve",
    "stats",
]


def lib_path() -> Path:
    """Absolute path of libkfence.so, for LD_PRELOAD."""
    return LIB_PATH


def native_version() -> str:
    """Version of the loaded libkfence.so."""
    return text(lib.kfence_version())


def serve(path: str | os.PathLike[str], *, symbolize: bool = True,
          max_clients: int = MAX_CLIENTS) -> StatsServer:
    """Serve this process's statistics over HTTP on the Unix socket path.

    Runs in a background thread; returns the server (``close()`` it, or use
    it in a with-block).  ``curl --unix-socket path http://kfence/stats``.
    Imported on first use: the server and prometheus_client cost nothing
    to a program that does not serve.
    """
    from .server import serve as _serve

    return _serve(path, symbolize=symbolize, max_clients=max_clients)
