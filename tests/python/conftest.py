"""Build the buggy extension and C functions; run Python scripts in a child."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kfence_py.reports import parse_reports


class PythonRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.reports = parse_reports(proc.stderr)


@pytest.fixture
def run_python(native_dir: Path, tmp_path: Path):
    """Run a script in a fresh interpreter (a bug must not take pytest down with it)."""

    def run(source: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> PythonRun:
        script = tmp_path / "script.py"
        script.write_text(textwrap.dedent(source))
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(native_dir), full_env.get("PYTHONPATH", "")]))
        full_env["CFUNCS"] = str(native_dir / "libcfuncs.so")
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, *args, str(script)], env=full_env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        return PythonRun(proc)

    return run
