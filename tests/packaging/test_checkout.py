"""A source tree first on sys.path (`python -m pytest` in a clone) and the installed package.

An unbuilt tree defers to the installed kfence-py; a tree built in place is used as it
is; an unbuilt tree with nothing installed says what to do. Quick: no build, no venv
(the whole path, in a real clone and venv, is in test_distributions.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
from pkgtools import ROOT, assert_search_only_beside_themselves, run

import kfence_py
from kfence_py import _checkout

PROBE = ("import sys, kfence_py\n"
         "print(kfence_py.__file__)\n"
         "print(kfence_py.native_version())\n"
         "print(*sorted({m.__file__ for n, m in sys.modules.items()\n"
         "               if n.startswith('kfence_py') and getattr(m, '__file__', None)}),\n"
         "      sep='\\n')\n")


def unbuilt_tree(dest: Path) -> Path:
    """The package's sources as a clone has them: no native part."""
    package = dest / "kfence_py"
    package.mkdir(parents=True)
    for source in (ROOT / "kfence_py").glob("*.py"):
        shutil.copy(source, package)
    assert not _checkout.is_built(package)
    return dest


def installed_package() -> Path:
    """The kfence_py a Python started outside any tree imports (its site-packages)."""
    proc = run([sys.executable, "-c", "import kfence_py; print(kfence_py.__file__)"],
               cwd=Path("/"), check=False)
    if proc.returncode:
        pytest.skip(f"no kfence-py installed:\n{proc.stderr}")
    return Path(proc.stdout.strip()).parent


def test_an_unbuilt_tree_first_on_the_path_loads_the_installed_package(tmp_path):
    installed = installed_package()
    tree = unbuilt_tree(tmp_path)
    lines = run([sys.executable, "-c", PROBE], cwd=tree).stdout.splitlines()
    assert Path(lines[0]) == installed / "__init__.py"
    assert lines[1], "the installed native part answers"
    modules = [Path(f) for f in lines[2:]]
    assert len(modules) > 3, "the package's modules were imported"
    assert all(m.is_relative_to(installed) for m in modules), modules


def test_an_unbuilt_tree_with_nothing_installed_says_what_to_do(tmp_path):
    tree = unbuilt_tree(tmp_path)
    # -S: no site-packages, so no kfence-py installed.
    proc = run([sys.executable, "-S", "-c", "import kfence_py"], cwd=tree, check=False)
    assert proc.returncode == 1
    assert (f"ImportError: kfence_py's native part is not built in {tree / 'kfence_py'} and no "
            "other kfence-py is installed: `pip install .`, or build it in place with "
            "`python setup.py build_ext --inplace`") in proc.stderr


def test_a_built_tree_is_used_as_it_is(tmp_path):
    # A copy of the package under test, native part included: found beside itself ($ORIGIN).
    package = Path(kfence_py.__file__).parent
    shutil.copytree(package, tmp_path / "kfence_py", ignore=shutil.ignore_patterns("__pycache__"))
    lines = run([sys.executable, "-c", PROBE], cwd=tmp_path).stdout.splitlines()
    assert Path(lines[0]) == tmp_path / "kfence_py" / "__init__.py"
    assert lines[1] == kfence_py.native_version()
    assert all(Path(f).is_relative_to(tmp_path) for f in lines[2:]), lines


def test_an_editable_install_is_found_through_its_direct_url(tmp_path, monkeypatch):
    """pip install -e records the project directory (PEP 610), not a package in site-packages."""
    project = tmp_path / "project"
    shutil.copytree(Path(kfence_py.__file__).parent, project / "kfence_py",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    info = site / "kfence_py-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kfence-py\nVersion: 0.1.0\n")
    (info / "direct_url.json").write_text(json.dumps(
        {"url": project.as_uri(), "dir_info": {"editable": True}}))
    tree = unbuilt_tree(tmp_path / "clone")
    monkeypatch.setattr(sys, "path", [str(tree), str(site)])
    assert _checkout.installed_package_dir(tree / "kfence_py") == project / "kfence_py"
    # Not built there either: nothing to defer to.
    for native in (project / "kfence_py").glob("_kfence*"):
        native.unlink()
    assert _checkout.installed_package_dir(tree / "kfence_py") is None


def test_the_tree_itself_is_never_its_own_installed_copy(tmp_path, monkeypatch):
    tree = unbuilt_tree(tmp_path)
    info = tmp_path / "kfence_py-0.1.0.egg-info"  # what setup.py sdist leaves in a tree
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: kfence-py\nVersion: 0.1.0\n")
    monkeypatch.setattr(sys, "path", [str(tree)])
    assert [d.metadata["Name"] for d in metadata.distributions(name="kfence-py")] == ["kfence-py"]
    assert _checkout.installed_package_dir(tree / "kfence_py") is None


def test_the_native_modules_find_the_library_beside_themselves():
    package = Path(kfence_py.__file__).parent
    assert_search_only_beside_themselves(
        {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()})
