"""The distributions of a fresh clone, made once per session in temporary directories.

``dists``: ``python -m build`` of a fresh clone: the sdist, then the wheel built from
that sdist (build's default), so a file missing from the sdist fails the wheel.
``venv``: a new virtual environment into which pip installs that sdist as a user would
(pip builds it in an isolated environment: setuptools and cffi from PyPI or pip's
cache). Each compiles the library, some tens of seconds: tests using them are slow.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgtools import fresh_clone, run


@dataclass(frozen=True)
class Dists:
    source: Path  # the clone they were built from
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Venv:
    root: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    pytest.importorskip("build", reason="the test extras' build is not installed")
    root = tmp_path_factory.mktemp("dists")
    source = fresh_clone(root / "src")
    out = root / "dist"
    # No build isolation: setuptools, wheel and cffi of this environment (the test extras),
    # nothing downloaded.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], cwd=root)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(source, sdist, wheel)


@pytest.fixture(scope="session")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", root], cwd=root.parent)
    python = root / "bin" / "python"
    # pytest: for `python -m pytest` in a fresh clone (test_distributions.py).
    run([python, "-m", "pip", "install", "--quiet", dists.sdist, "pytest"], cwd=root.parent)
    platlib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                  cwd=root.parent).stdout.strip()
    assert Path(platlib).is_relative_to(root), platlib
    return Venv(root, Path(platlib))
