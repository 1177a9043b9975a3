"""Fixtures for the controller tests: short private directories, driven targets."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from ctl import PROGS, Driven

import kfence_py
from kfence_py.options import format_options


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private (0700) directory with a short path: sun_path holds 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kfc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def target(programs) -> Path:
    return programs.build(PROGS / "target.c")


@pytest.fixture(scope="session")
def uaf_program(programs) -> Path:
    return programs.build(PROGS / "uaf.c")


@pytest.fixture
def start_target(target, short_dir):
    """Start target.c preloaded, publishing its state in <short_dir>/state."""
    started: list[Driven] = []
    state_dir = short_dir / "state"

    def start(options: Mapping[str, object] | None = None) -> tuple[Driven, int, Path]:
        opts = {"state_dir": state_dir, **(options or {})}
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
        env.update(LD_PRELOAD=str(kfence_py.lib_path()), KFENCE_OPTIONS=format_options(opts))
        driven = Driven([str(target)], env, short_dir)
        started.append(driven)
        ready = driven.readline()
        assert ready.startswith("ready "), ready
        return driven, int(ready.split()[1]), state_dir

    yield start
    for driven in started:
        driven.kill()


@pytest.fixture
def live(start_target):
    """A running target holding 5 guarded objects: (driven, pid, state_dir)."""
    driven, pid, state_dir = start_target({"sample_rate": 1})
    assert driven.ask("hold 5") == "ok"
    return driven, pid, state_dir
