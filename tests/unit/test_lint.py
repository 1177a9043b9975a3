"""The Python side stays lint-clean and type-clean (ruff and mypy, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    proc = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed")
def test_mypy_clean():
    proc = subprocess.run(["mypy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed")
def test_stubs_match_the_built_native_modules():
    """_kfence.pyi and _pyext.pyi against the modules as built (stubtest imports them)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "kfence_py._kfence", "kfence_py._pyext",
         "--mypy-config-file", str(ROOT / "pyproject.toml"),
         "--allowlist", str(Path(__file__).with_name("stubtest_allowlist.txt")),
         # Its one entry matches nothing from Python 3.12 on (see the file).
         "--ignore-unused-allowlist"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
