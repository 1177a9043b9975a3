"""A PyPI package's sdist, downloaded, unpacked and built with debug info.

Shared by bench/catch.py (simplejson under the test-suite mode) and
bench/field.py (the field trial over many packages): both build a package
from its source distribution, never from a wheel, so that its C code has
debug info for the reports' file:line and is what the trial tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path


def sdist_stem(name: str, version: str) -> str:
    """How an sdist of name==version begins: PEP 625 lower-cases and uses underscores,
    older ones kept the project's spelling."""
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"


def find_sdist(directory: Path, name: str, version: str) -> Path | None:
    """The sdist of name==version in directory (any spelling of the name)."""
    want = sdist_stem(name, version)
    for path in sorted(directory.glob("*")):
        stem = path.name.removesuffix(".tar.gz").removesuffix(".zip")
        if stem != path.name and sdist_stem(*stem.rsplit("-", 1)) == want:
            return path
    return None


def download_sdist(name: str, version: str, directory: Path,
                   python: str = sys.executable) -> Path:
    """The sdist of name==version, downloaded into directory unless already there."""
    directory.mkdir(parents=True, exist_ok=True)
    found = find_sdist(directory, name, version)
    if found is not None:
        return found
    # The package's own sdist; its build requirements (for the metadata pip prepares
    # on the way) may come as wheels: Cython built from source takes minutes.
    subprocess.run([python, "-m", "pip", "download", "-q", "--no-binary", name,
                    "--no-deps", "-d", str(directory), f"{name}=={version}"],
                   check=True, capture_output=True, text=True)
    found = find_sdist(directory, name, version)
    if found is None:
        raise FileNotFoundError(f"pip downloaded no sdist of {name}=={version} "
                                f"into {directory}")
    return found


def unpack(sdist: Path, directory: Path) -> Path:
    """The sdist unpacked under directory: its top-level folder."""
    directory.mkdir(parents=True, exist_ok=True)
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as archive:
            top = archive.namelist()[0].split("/")[0]
            archive.extractall(directory)
    else:
        with tarfile.open(sdist) as archive:
            top = archive.getnames()[0].split("/")[0]
            archive.extractall(directory, filter="data")
    return directory / top


def debug_env(cflags: str = "-g", base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a build with debug info: the package's own flags, then cflags.

    setuptools before 80 appends CFLAGS to the interpreter's own (which hold the
    -O level and -DNDEBUG); later ones use CFLAGS instead of them, which built
    every extension at -O0 with its asserts on (pyppmd then failed an assert
    its release build never checks).  So the interpreter's flags are written
    out first: the package keeps its optimisation with either, and gains -g.
    """
    env = dict(os.environ if base is None else base)
    own = sysconfig.get_config_var("CFLAGS") or ""
    for var in ("CFLAGS", "CXXFLAGS"):
        env[var] = " ".join(filter(None, [own, env.get(var, ""), cflags]))
    return env


def build_inplace(src: Path, python: str = sys.executable, cflags: str = "-g",
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``setup.py build_ext --inplace`` in the unpacked sdist (raises on failure)."""
    return subprocess.run([python, "setup.py", "-q", "build_ext", "--inplace"], cwd=src,
                          env=debug_env(cflags, env), check=True, capture_output=True,
                          text=True)


def build_install(src: Path, python: str, cflags: str = "-g",
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pip install .`` of the unpacked sdist into python's environment (raises on failure).

    No build isolation: the build requirements are the package's deps, installed
    in the same environment first; pip's own wheel cache is bypassed so the
    build is this one, with these flags.
    """
    return subprocess.run([python, "-m", "pip", "install", "-q", "--no-build-isolation",
                           "--no-deps", "--no-cache-dir", "."], cwd=src,
                          env=debug_env(cflags, env), check=True, capture_output=True,
                          text=True)
