"""How long a state directory keeps the files of processes that have exited.

Every process started with ``state_dir`` leaves ``<pid>.state`` behind, so a
directory that many short processes share grows without end.  The rule:

* the file of a running process is kept;
* the file of an exited process that reported a bug (its bug counter is not
  zero) is kept, for post-mortem;
* a file that cannot be read is kept (it may be one being created, and a bad
  file is the user's to look at);
* of the clean exited ones (no bug), the ``keep_clean`` newest (latest start)
  are kept and the older ones are removed.

A process has exited when its pid is gone or now belongs to another process
(see sources.is_running).  ``kfence-py run`` applies the rule when its command
ends, ``kfence-py serve`` when it starts and then every PRUNE_INTERVAL.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._native import lib
from .governor import gate_file
from .sources import DirectorySource, is_running
from .state import StateError, StateView

log = logging.getLogger("kfence_py")

KEEP_CLEAN = 100  # clean exited processes whose state files are kept
PRUNE_INTERVAL = 60.0  # seconds between two prunings by a running server


@dataclass
class Pruned:
    """What one pruning did."""

    removed: list[Path] = field(default_factory=list)
    kept_buggy: int = 0
    kept_running: int = 0
    kept_clean: int = 0
    kept_unreadable: int = 0


@dataclass(frozen=True)
class _Clean:
    path: Path
    pid: int
    inode: int
    start: tuple[int, int]  # (start_realtime_ns, start_ns): which process wrote it


def _identity(view: StateView) -> tuple[int, int]:
    return int(view.header.start_realtime_ns), int(view.header.start_ns)


def prune(state_dir: str | os.PathLike[str], keep_clean: int = KEEP_CLEAN) -> Pruned:
    """Apply the retention rule to state_dir; what was removed and kept."""
    if keep_clean < 0:
        raise ValueError(f"keep_clean must be 0 or more, not {keep_clean}")
    source = DirectorySource(state_dir)
    result = Pruned()
    clean: list[_Clean] = []
    for pid, path in source.state_files():
        try:
            inode = path.stat(follow_symlinks=False).st_ino
            view = StateView.open(path)
        except (OSError, StateError):
            result.kept_unreadable += 1
            continue
        if view.counter(lib.KFENCE_COUNTER_BUGS) > 0:
            result.kept_buggy += 1
        elif is_running(pid, path):
            result.kept_running += 1
        else:
            clean.append(_Clean(path, pid, inode, _identity(view)))
    clean.sort(key=lambda c: (c.start[0], c.pid), reverse=True)
    result.kept_clean = min(len(clean), keep_clean)
    for old in clean[keep_clean:]:
        if _remove_if_unchanged(old):
            result.removed.append(old.path)
    if result.removed:
        log.info("%s: removed the state files of %d clean exited process(es)",
                 state_dir, len(result.removed))
    return result


def _remove_if_unchanged(old: _Clean) -> bool:
    """Unlink old.path if it still is the file of the process judged exited.

    A new process given the same pid truncates and reuses the same name (and
    inode): the file is read once more just before it goes.
    """
    try:
        if old.path.stat(follow_symlinks=False).st_ino != old.inode:
            return False
        view = StateView.open(old.path)
        if (_identity(view) != old.start or view.counter(lib.KFENCE_COUNTER_BUGS) > 0
                or is_running(old.pid, old.path)):
            return False
        old.path.unlink()
        gate_file(old.path).unlink(missing_ok=True)
    except (OSError, StateError) as exc:
        log.debug("kept %s: %s", old.path, exc)
        return False
    return True
