"""The installed package: library, module, CLI and the demo."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import kfence_py
from kfence_py._native import lib
from kfence_py.cli import main


def test_lib_path_is_the_installed_library(capsys):
    assert main(["lib-path"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(kfence_py.lib_path()) and kfence_py.lib_path().is_file()
    module = subprocess.run([sys.executable, "-m", "kfence_py", "lib-path"], cwd="/",
                            capture_output=True, text=True, check=True)
    assert module.stdout.strip() == path


def test_the_module_uses_the_same_library():
    assert kfence_py.native_version() == kfence_py.__version__
    assert not lib.kfence_is_interposing(), "imported without the preload"


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm not installed")
def test_library_has_no_python_in_it():
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(kfence_py.lib_path())],
                             capture_output=True, text=True, check=True).stdout
    assert "Py" not in symbols
    assert " malloc" not in symbols, "malloc is ours, never imported"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
def test_library_cannot_be_unloaded():
    dynamic = subprocess.run(["readelf", "-d", str(kfence_py.lib_path())],
                             capture_output=True, text=True, check=True).stdout
    assert "NODELETE" in dynamic


def test_demo_shows_three_real_reports(capfd):
    assert main(["demo"]) == 0
    out, err = capfd.readouterr()
    assert "out-of-bounds write in fill_line()" in out
    assert "use-after-free read in retire()" in out
    assert "memory corruption in main()" in out
    assert err.count("BUG: KFENCE:") == 3


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "lib-path" in capsys.readouterr().out
