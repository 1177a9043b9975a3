"""Helpers of the packaging tests: child environments, fresh clones, ELF search paths."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parents[2]

# What would point a child Python at this checkout (PYTHONPATH while developing), or
# preload the library into the tools the tests run.
NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV", "LD_PRELOAD",
                 "KFENCE_OPTIONS")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(cmd: Sequence[str | Path], cwd: Path, *, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """cmd in cwd, in a clean environment; a failure (with check) fails the test, with output."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def fresh_clone(dest: Path) -> Path:
    """A ``git clone`` of this checkout at HEAD, plus its uncommitted changes to tracked files.

    What a new contributor gets: sources only, nothing built. The uncommitted changes
    (none in CI) make the tests see the tree being edited; a new file counts once it is
    ``git add``-ed.
    """
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout, or no git")
    head = run(["git", "-C", ROOT, "rev-parse", "HEAD"], cwd=ROOT).stdout.strip()
    run(["git", "clone", "--quiet", "--no-checkout", ROOT, dest], cwd=ROOT)
    run(["git", "-C", dest, "checkout", "--quiet", "--detach", head], cwd=ROOT)
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "--binary", "HEAD"],
                          capture_output=True, check=True).stdout
    if diff:
        subprocess.run(["git", "-C", str(dest), "apply", "--whitespace=nowarn", "-"],
                       input=diff, capture_output=True, check=True)
    return dest


@dataclass(frozen=True)
class ElfPaths:
    """What the dynamic loader reads from an ELF file to find its libraries."""

    needed: tuple[str, ...]
    runpath: tuple[str, ...]  # DT_RUNPATH and DT_RPATH entries, each directory apart


def elf_paths(data: bytes) -> ElfPaths | None:
    """The dynamic section's libraries and search paths; None for a file that is not ELF."""
    if not data.startswith(b"\x7fELF"):
        return None
    needed: list[str] = []
    runpath: list[str] = []
    for section in ELFFile(io.BytesIO(data)).iter_sections():
        if not isinstance(section, DynamicSection):
            continue
        for tag in section.iter_tags():
            if tag.entry.d_tag == "DT_NEEDED":
                needed.append(tag.needed)
            elif tag.entry.d_tag == "DT_RUNPATH":
                runpath.extend(tag.runpath.split(":"))
            elif tag.entry.d_tag == "DT_RPATH":
                runpath.extend(tag.rpath.split(":"))
    return ElfPaths(tuple(needed), tuple(runpath))


def assert_search_only_beside_themselves(files: dict[str, bytes]) -> None:
    """The ELF files of a package: the extensions find libkfence.so by $ORIGIN, and nothing
    names a directory of the machine that built them."""
    paths = {name: p for name, data in files.items() if (p := elf_paths(data)) is not None}
    linking = {Path(name).name.split(".")[0] for name, p in paths.items()
               if "libkfence.so" in p.needed}
    assert linking == {"_kfence", "_pyext"}, paths
    for name, p in paths.items():
        expected = ("$ORIGIN",) if "libkfence.so" in p.needed else ()
        assert p.runpath == expected, f"{name}: RUNPATH {p.runpath}"
