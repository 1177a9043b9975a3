"""Debian packages a test needs (sqlite3, jq, debuginfod, prometheus-node-exporter).

A test that runs a program found on PATH is decorated with ``needs_debian``; where
the program is missing, the ``debian`` fixture installs its package with apt-get, a
change to the machine: the test is then marked ``machine`` and runs only with the
opt-in (see tests/conftest.py), as CI does.  README's install line names every
package, so that a developer can install them once instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# Debian's way to keep a package's postinst from starting its service (a
# node_exporter listening on every address): invoke-rc.d asks this script first.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def needs_debian(program: str, package: str) -> Callable[[T], T]:
    """For a test that runs `program`, found on PATH. Where it is missing, the `debian`
    fixture installs Debian `package` with apt-get, a change to the machine: the test is
    then marked `machine`, and runs only with the opt-in (see tests/conftest.py)."""
    def mark(test: T) -> T:
        if shutil.which(program) is None:
            why = (f"{program} is missing, and installing Debian package {package} "
                   "with apt-get changes the machine")
            test = pytest.mark.machine(why)(test)
        return test

    return mark


@contextmanager
def services_not_started() -> Iterator[None]:
    """No service started by the packages installed meanwhile (policy-rc.d says 101)."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# kfence_py's tests: no service starts\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink()


@pytest.fixture(scope="session")
def apt_lists_updated() -> None:
    """apt-get update, once, before the first package is installed."""
    subprocess.run(["apt-get", "update", "-qq"], env=APT_ENV, check=False,
                   capture_output=True, timeout=600)


@pytest.fixture
def debian(request: pytest.FixtureRequest) -> Callable[[str, str], str]:
    """The path of a program; a missing one is installed from Debian (root and apt-get
    only), and only for a test marked `machine`, which runs only with the opt-in."""
    def need(program: str, package: str) -> str:
        path = shutil.which(program)
        if (path is None and request.node.get_closest_marker("machine") is not None
                and os.geteuid() == 0 and shutil.which("apt-get")):
            request.getfixturevalue("apt_lists_updated")
            with services_not_started():
                subprocess.run(["apt-get", "install", "-y", "-qq", package], env=APT_ENV,
                               check=False, capture_output=True, timeout=600)
            path = shutil.which(program)
        if path is None:
            pytest.skip(f"{program} is not installed and could not be (Debian package {package})")
        return path

    return need
