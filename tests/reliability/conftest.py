"""Reliability tests: programs from tests/reliability/progs, run under the preload."""

from __future__ import annotations

from pathlib import Path

import pytest

PROGS = Path(__file__).resolve().parent / "progs"


@pytest.fixture(scope="session")
def reliability_prog(programs):
    def build(name: str) -> Path:
        return programs.build(PROGS / name)
    return build
