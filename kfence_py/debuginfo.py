"""Debug information found by GNU build-id: in local directories, and from debuginfod.

A module stripped of its debug information (as distributions ship them), or
not on this machine at all (a report symbolized elsewhere), is found by the
build-id the state or a JSON record carries:

1. ``<dir>/.build-id/<xx>/<rest>.debug`` under each debug directory
   (``/usr/lib/debug`` by default: where Debian's -dbgsym packages and
   ``objcopy --only-keep-debug`` installs put it; gdb and the symbolizers
   look there too);
2. the debuginfod servers of ``DEBUGINFOD_URLS`` (whitespace-separated), with
   elfutils' client protocol: ``GET <url>/buildid/<hex>/debuginfo``, waiting
   ``DEBUGINFOD_TIMEOUT`` seconds (90) and taking at most
   ``DEBUGINFOD_MAXSIZE`` bytes when set.  A file is kept only if its build-id
   is the one asked for, in ``<cache>/<hex>/debuginfo``: ``DEBUGINFOD_CACHE_PATH``
   (the layout of elfutils' client, so the two share it), else
   ``$XDG_CACHE_HOME/kfence_py/debuginfod``, else ``~/.cache/kfence_py/debuginfod``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .elf import build_id

log = logging.getLogger("kfence_py")

DEBUG_DIRECTORY = Path("/usr/lib/debug")
DEFAULT_TIMEOUT = 90.0  # seconds, as elfutils' DEBUGINFOD_TIMEOUT
BUILD_ID = re.compile(r"^[0-9a-f]{4,128}$")  # hex, as the state and JSON records carry it
_CHUNK = 1 << 16


def cache_directory(env: Mapping[str, str] = os.environ) -> Path:
    """Where debug files fetched from debuginfod are kept."""
    if env.get("DEBUGINFOD_CACHE_PATH"):
        return Path(env["DEBUGINFOD_CACHE_PATH"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "kfence_py" / "debuginfod"


def _number(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        log.warning("%s=%r is not a number; ignored", name, text)
        return None
    return value if value > 0 else None


@dataclass
class DebugFiles:
    """The debug file of a build-id: local directories first, then debuginfod.

    Answers (found or not) are remembered for the life of the object; a
    server that could not be reached is not asked again.
    """

    directories: Sequence[Path] = (DEBUG_DIRECTORY,)
    urls: Sequence[str] = ()
    cache: Path = field(default_factory=cache_directory)
    timeout: float = DEFAULT_TIMEOUT
    max_size: int | None = None
    _found: dict[str, Path | None] = field(default_factory=dict, repr=False)
    _down: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_environment(cls, directories: Sequence[Path] | None = None,
                         env: Mapping[str, str] = os.environ) -> DebugFiles:
        """The directories given (else /usr/lib/debug) and debuginfod as the environment
        sets it (DEBUGINFOD_URLS, _TIMEOUT, _MAXSIZE, _CACHE_PATH, XDG_CACHE_HOME)."""
        size = _number(env, "DEBUGINFOD_MAXSIZE")
        return cls(directories=tuple(directories) if directories else (DEBUG_DIRECTORY,),
                   urls=tuple(env.get("DEBUGINFOD_URLS", "").split()),
                   cache=cache_directory(env),
                   timeout=_number(env, "DEBUGINFOD_TIMEOUT") or DEFAULT_TIMEOUT,
                   max_size=int(size) if size else None)

    def find(self, wanted: str) -> Path | None:
        """The debug file of build-id wanted (hex), or None."""
        wanted = wanted.lower()
        if not BUILD_ID.match(wanted):
            return None
        if wanted not in self._found:
            self._found[wanted] = self.local(wanted) or self.fetch(wanted)
        return self._found[wanted]

    def local(self, wanted: str) -> Path | None:
        """``<dir>/.build-id/xx/rest.debug`` in a debug directory, if it is there."""
        for directory in self.directories:
            path = directory / ".build-id" / wanted[:2] / f"{wanted[2:]}.debug"
            if path.is_file():
                return path
        return None

    def fetch(self, wanted: str) -> Path | None:
        """The debug file from the cache, else from the first debuginfod server that has it."""
        kept = self.cache / wanted / "debuginfo"
        if kept.is_file() and build_id(kept) == wanted:
            return kept
        for url in self.urls:
            if url in self._down:
                continue
            if self._download(url, wanted, kept):
                return kept
        return None

    def _download(self, url: str, wanted: str, kept: Path) -> bool:
        import urllib.error  # only when a debuginfod server is asked: not at every start
        import urllib.request

        address = f"{url.rstrip('/')}/buildid/{wanted}/debuginfo"
        request = urllib.request.Request(address, headers={"User-Agent": "kfence_py"})
        try:
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=kept.parent, prefix=".debuginfo.")
        except OSError as exc:
            log.warning("cannot keep debug information in %s: %s", kept.parent, exc.strerror)
            return False
        try:
            with os.fdopen(fd, "wb") as tmp, \
                    urllib.request.urlopen(request, timeout=self.timeout) as answer:
                self._copy(answer, tmp, address)
            got = build_id(name)
            if got != wanted:
                raise _Refused(f"{address} answered a file of build-id {got}, not {wanted}")
            os.replace(name, kept)
        except urllib.error.HTTPError as exc:
            # 404: this server does not have it; another may.
            log.debug("%s: %s %s", address, exc.code, exc.reason)
            return False
        except _Refused as exc:
            log.warning("%s; not used", exc)
            return False
        except (urllib.error.URLError, OSError) as exc:
            log.warning("debuginfod server %s: %s; not asked again",
                        url, getattr(exc, "reason", exc))
            self._down.add(url)
            return False
        finally:
            if os.path.exists(name):
                os.unlink(name)
        log.info("debug information of %s from %s", wanted, url)
        return True

    def _copy(self, answer: IO[bytes], tmp: IO[bytes], address: str) -> None:
        total = 0
        while chunk := answer.read(_CHUNK):
            total += len(chunk)
            if self.max_size is not None and total > self.max_size:
                raise _Refused(f"{address} is over DEBUGINFOD_MAXSIZE ({self.max_size} bytes)")
            tmp.write(chunk)


class _Refused(Exception):
    """A debuginfod answer not kept: too large, or not the file asked for."""
