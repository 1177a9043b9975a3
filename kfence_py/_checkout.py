"""An unbuilt source tree stands aside for the installed kfence_py.

``python -m pytest`` (or ``python -c ...``) run at the top of a clone puts the
clone first on ``sys.path``, so ``import kfence_py`` finds its sources, whose
native part (``_kfence``, ``_pyext``, ``libkfence.so``) exists only after
``pip install`` or ``python setup.py build_ext --inplace``.  Such a tree hands
the import over to the installed distribution, so the package tested is the
one installed, as with the ``pytest`` command (which puts ``tests/`` on the
path, not the clone).  A tree built in place is used as it is; with nothing
installed the import fails in ``_native`` with a message saying what to do.

Only the standard library is imported here: this runs before the rest of the
package, which needs the native part.  ``importlib.metadata`` (30 ms of a 100 ms
``import kfence_py``) only when the tree is unbuilt: a built or installed
package never looks for another.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from importlib import metadata

DISTRIBUTION = "kfence-py"
PACKAGE = "kfence_py"


def is_built(package_dir: Path) -> bool:
    """Whether the cffi module sits in package_dir (built in place, or installed)."""
    return any((package_dir / f"_kfence{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)


def _editable_source(dist: metadata.Distribution) -> Path | None:
    """The project directory of an editable install (PEP 610's direct_url.json), if it is one."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    info = record.get("dir_info")
    url = urlparse(str(record.get("url", "")))
    if not isinstance(info, dict) or not info.get("editable") or url.scheme != "file":
        return None
    return Path(unquote(url.path))


def installed_package_dir(source_dir: Path) -> Path | None:
    """A built kfence_py of an installed distribution other than source_dir, if any."""
    from importlib import metadata

    here = source_dir.resolve()
    for dist in metadata.distributions(name=DISTRIBUTION):
        candidates = [Path(str(dist.locate_file(PACKAGE)))]
        editable = _editable_source(dist)
        if editable is not None:
            candidates.append(editable / PACKAGE)
        for candidate in candidates:
            if candidate.resolve() != here and is_built(candidate):
                return candidate
    return None


def stand_aside_if_unbuilt(name: str, init_file: str) -> None:
    """Replace the package being imported by the installed one when this tree is unbuilt.

    Called first thing by ``kfence_py/__init__.py``.  The installed package is
    loaded under the same name and put in ``sys.modules``, which the import
    system returns once this ``__init__`` ends; the rest of this ``__init__``
    then only imports the installed submodules again (they are in
    ``sys.modules`` by then) into a module object nobody keeps.
    """
    source_dir = Path(init_file).parent
    if is_built(source_dir):
        return
    target = installed_package_dir(source_dir)
    if target is None:
        return
    spec = importlib.util.spec_from_file_location(
        name, target / "__init__.py", submodule_search_locations=[str(target)])
    if spec is None or spec.loader is None:
        return
    # Submodules of the source tree imported so far (this one) must not stand in for the
    # installed package's own.
    for loaded in [m for m in sys.modules if m.startswith(f"{name}.")]:
        del sys.modules[loaded]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
