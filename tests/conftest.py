"""Shared fixtures: compile small C/C++ programs and run them under the preload.

Markers (declared in pyproject.toml):

- ``slow``: takes more than about two seconds. ``pytest -m "not slow"`` is the quick
  subset, which still touches every area (unit, integration, controller, Python API).
- ``machine(why)``: the test changes the machine itself, beyond its own processes and
  temporary files (a system-wide sysctl, a Debian package installed with apt-get). It
  is skipped unless the environment has ``KFENCE_TEST_MACHINE=1``, which CI
  (``.ci/run``) sets; a developer's ``pytest`` never changes the machine behind their
  back. ``why`` says what would change, and is shown in the skip reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_packages import apt_lists_updated, debian  # noqa: F401 (fixtures for every test)

import kfence_py
from kfence_py.options import format_options
from kfence_py.reports import Report, parse_reports

TESTS = Path(__file__).resolve().parent
PROGS = TESTS / "integration" / "progs"
CSRC = TESTS.parent / "csrc"

# The opt-in for tests marked ``machine``: see the module docstring.
MACHINE_OPT_IN = "KFENCE_TEST_MACHINE"

pytest_plugins = ["pytester"]


def pytest_report_header() -> str:
    """The kfence_py under test: an unbuilt checkout defers to the installed one (_checkout.py)."""
    return f"kfence_py {kfence_py.__version__} from {Path(kfence_py.__file__).parent}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``machine`` before any of its fixtures runs, unless opted in."""
    marker = item.get_closest_marker("machine")
    if marker is not None and os.environ.get(MACHINE_OPT_IN) != "1":
        why = marker.args[0] if marker.args else "changes the machine"
        pytest.skip(f"{why}; set {MACHINE_OPT_IN}=1 to allow changes to the machine")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def reports(self) -> list[Report]:
        return parse_reports(self.stderr)

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("kfence:")]

    def counters(self) -> dict[str, int]:
        """The "counters: k=v ..." line a test program printed."""
        line = next(x for x in self.stdout.splitlines() if x.startswith("counters:"))
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


class Programs:
    """Builds test programs once per session and runs them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lib = kfence_py.lib_path()

    def build(self, source: str | Path, *, cxx: bool = False,
              flags: Sequence[str] = ()) -> Path:
        path = PROGS / source if isinstance(source, str) else source
        text = path.read_text()
        key = hashlib.sha256(f"{text}{cxx}{flags}".encode()).hexdigest()[:16]
        exe = self.root / f"{path.stem}-{key}"
        if not exe.exists():
            compiler = "g++" if cxx else "gcc"
            cmd = [compiler, "-g", "-O0", "-pthread", f"-I{CSRC}", f"-I{PROGS}", *flags,
                   str(path), "-o", str(exe), "-ldl"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                pytest.fail(f"cannot build {path.name}:\n{proc.stderr}")
        return exe

    def run(self, exe: Path | str, *args: str, options: Mapping[str, object] | str | None = None,
            preload: bool = True, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> Run:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
        if preload:
            full_env["LD_PRELOAD"] = str(self.lib)
        if options is not None:
            full_env["KFENCE_OPTIONS"] = (options if isinstance(options, str)
                                          else format_options(options))
        full_env.update(env or {})
        proc = subprocess.run([str(exe), *args], env=full_env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs")
    return Programs(tmp_path_factory.mktemp("progs"))


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the kfbugs extension and libcfuncs.so."""
    out = tmp_path_factory.mktemp("native")
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for cmd in (
        # built as extensions are: optimized, without asserts
        ["gcc", "-shared", "-fPIC", "-O2", "-DNDEBUG", "-g", f"-I{include}",
         str(TESTS / "python" / "kfbugs.c"), "-o", str(out / f"kfbugs{suffix}")],
        ["gcc", "-shared", "-fPIC", "-O0", "-g", str(TESTS / "python" / "cfuncs.c"),
         "-o", str(out / "libcfuncs.so")],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            pytest.fail(f"cannot build {cmd[-3]}:\n{proc.stderr}")
    return out
