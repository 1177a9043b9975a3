"""The version is written once, in kfence_py/__init__.py; the metadata and the library take it."""

from __future__ import annotations

import re

import pytest
from pkgtools import ROOT

import kfence_py

# Everything the build reads (MANIFEST.in's list) besides the README.
BUILD_INPUTS = ["pyproject.toml", "setup.py", "build_ffi.py", "MANIFEST.in", "csrc/*",
                "kfence_py/*.py", "kfence_py/*.pyi"]


def test_the_version_is_written_once():
    pattern = re.compile(rf"(?<![\w.]){re.escape(kfence_py.__version__)}(?![\w.])")
    holders = sorted(str(path.relative_to(ROOT)) for glob in BUILD_INPUTS
                     for path in ROOT.glob(glob) if pattern.search(path.read_text()))
    assert holders == ["kfence_py/__init__.py"]


def test_the_library_and_the_metadata_take_it_from_there():
    assert kfence_py.native_version() == kfence_py.__version__
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "kfence_py.__version__"}
