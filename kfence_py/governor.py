"""The controller's hand on the sampling gate, under ``kfence-py run``.

A pool full of long-lived objects guards nothing new.  The library keeps a
reserve for new allocation sites on its own (skip_covered_thresh); the
governor adds what only a controller can: it watches each running process's
pool use and its skips for want of a slot, and widens the gate (a larger
sample_rate or sample_interval: fewer samples) while the pool is nearly
full, and narrows it back to what the user asked for once the pool has room
again.  Each change goes through the control block, within bounds the user
sets, and is written next to the state (``<pid>.gate``, JSON) so that
``kfence-py stats`` can say what the controller did last and why.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .sources import DirectorySource, Process

log = logging.getLogger("kfence_py")

GATE_SUFFIX = ".gate"
MAX_GATE_FILE = 4096  # bytes: a decision is one short JSON object
HIGH_USE = 0.90  # pool use at which the gate widens
LOW_USE = 0.50  # pool use under which it narrows back
PERIOD = 1.0  # seconds between two looks


@dataclass(frozen=True)
class Bounds:
    """How far the governor may widen the gate (the user's --max-* flags)."""

    max_sample_rate: int = 1024
    max_sample_interval: int = 1000  # ms


DEFAULT_BOUNDS = Bounds()


@dataclass
class Decision:
    """One change the governor made, as ``<pid>.gate`` holds it."""

    time: float  # seconds since the epoch
    setting: str
    old: int
    new: int
    why: str

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{when} {self.setting} {self.old} -> {self.new}: {self.why}"


def gate_file(state_file: Path) -> Path:
    return state_file.with_suffix(GATE_SUFFIX)


def last_decision(state_file: Path | None) -> Decision | None:
    """What the governor last did to this process, if it did anything."""
    if state_file is None:
        return None
    try:
        # Anybody's name in the directory: no link, no FIFO to block on, a small file.
        fd = os.open(gate_file(state_file), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, MAX_GATE_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_GATE_FILE:
            return None
        doc: dict[str, Any] = json.loads(data)
        return Decision(float(doc["time"]), str(doc["setting"]), int(doc["old"]),
                        int(doc["new"]), str(doc["why"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class _Seen:
    base: dict[str, int]  # the settings the process started with: never narrower
    capacity: int  # capacity skips at the last look


@dataclass
class Governor:
    source: DirectorySource
    bounds: Bounds = field(default_factory=Bounds)
    _seen: dict[tuple[int, float], _Seen] = field(default_factory=dict)
    _next: float = 0.0

    def poll(self, now: float | None = None) -> list[Decision]:
        """Look at every running process once per PERIOD; the changes made."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return []
        self._next = now + PERIOD
        made = []
        processes, _ = self.source.processes()
        running = [p for p in processes if p.running and p.state_file is not None]
        # What is known of each process lasts as long as it runs (a build runs thousands).
        alive = {self._key(p) for p in running}
        self._seen = {k: v for k, v in self._seen.items() if k in alive}
        for p in running:
            decision = self._steer(p)
            if decision is not None:
                made.append(decision)
        return made

    @staticmethod
    def _key(p: Process) -> tuple[int, float]:
        return p.pid, float(p.view.header.start_realtime_ns)  # a reused pid is a new process

    def _steer(self, p: Process) -> Decision | None:
        s = p.view.stats()
        control = p.control()
        seen = self._seen.setdefault(self._key(p), _Seen(dict(control), s.skipped["capacity"]))
        full = s.skipped["capacity"] - seen.capacity
        seen.capacity = s.skipped["capacity"]
        if not control["enabled"] or not s.pool_size:
            return None
        use = s.currently_allocated / s.pool_size
        setting, limit = (("sample_rate", self.bounds.max_sample_rate) if control["sample_rate"]
                          else ("sample_interval", self.bounds.max_sample_interval))
        old, base = control[setting], seen.base[setting]
        if not old:
            return None  # the time gate is off (sample_interval=0): nothing to steer
        if use >= HIGH_USE or full:
            new = min(old * 2, max(limit, base))
            why = (f"pool {use:.0%} full" + (f", {full} allocation(s) skipped for want of a "
                                             "slot" if full else "") + ": fewer samples")
        elif use < LOW_USE and old > base:
            new = max(old // 2, base)
            why = f"pool {use:.0%} full: back towards the {setting} asked for ({base})"
        else:
            return None
        if new == old:
            return None
        self.source.set_control(p, {setting: new})
        decision = Decision(time.time(), setting, old, new, why)
        self._record(p, decision)
        log.info("pid %d: %s", p.pid, decision.describe())
        return decision

    @staticmethod
    def _record(p: Process, decision: Decision) -> None:
        assert p.state_file is not None
        path = gate_file(p.state_file)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(decision), f)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot record the gate decision in %s: %s", path, exc)
