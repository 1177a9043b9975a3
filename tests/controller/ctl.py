"""Helpers of the controller tests: driven targets, the CLI in a child."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROGS = HERE / "progs"
# A cap on any one wait for a child, so that a broken build fails instead of hanging.
CAP = 60


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def kfence_cli(*args: str, cwd: Path, input: str | None = None,
               env: Mapping[str, str] | None = None) -> CliRun:
    """kfence-py in a child process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "kfence_py", *args], cwd=cwd, input=input,
                          capture_output=True, text=True, timeout=CAP, check=False,
                          env={**os.environ, **(env or {})})
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


class Driven:
    """A child process that takes one command a line and answers one line each.

    It leads a process group of its own, so that kill() ends whatever it forked
    too, and no stray child keeps its pipes open.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, *,
                 merge_stderr: bool = False,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True,
            env=dict(env), cwd=cwd, start_new_session=True, preexec_fn=preexec_fn)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True)]
        if self.proc.stderr is not None:
            self._readers.append(threading.Thread(target=self._read_err, daemon=True))
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_err(self) -> None:
        self._err.append(self.proc.stderr.read())

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def readline(self) -> str:
        try:
            line = self._lines.get(timeout=CAP)
        except queue.Empty:
            self.kill()
            pytest.fail("the target did not answer")
        if line is None:
            pytest.fail(f"the target ended early ({self.finish()}): {self.stderr}")
        return line

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.readline()

    def finish(self) -> int:
        """Close its stdin and wait for it and its output; its exit status."""
        if not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout=CAP)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the target did not end")
        for reader in self._readers:
            reader.join(timeout=CAP)
            if reader.is_alive():  # a child it left behind holds the pipe
                self._killpg()
                reader.join(timeout=CAP)
        return status

    def _killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """End it and everything it started."""
        self._killpg()
        self.finish()


def line_of(marker: str, source: Path = PROGS / "uaf.c") -> int:
    """The line of source holding /* marker */."""
    for number, text in enumerate(source.read_text().splitlines(), 1):
        if f"/* {marker} */" in text:
            return number
    raise AssertionError(f"no {marker} in {source}")


def start_serve(state_dir: Path, sock: Path, cwd: Path, *args: str,
                preexec_fn: Callable[[], None] | None = None) -> Driven:
    """``kfence-py serve`` in a child, once it listens; its stderr comes as lines."""
    server = Driven([sys.executable, "-m", "kfence_py", "serve", "--state-dir", str(state_dir),
                     "--socket", str(sock), *args], os.environ, cwd, merge_stderr=True,
                    preexec_fn=preexec_fn)
    while not server.readline().startswith("kfence-py: serving"):
        pass
    return server


def stop_serve(server: Driven) -> str:
    """Stop a server started by start_serve(); everything it wrote after it listened."""
    server.proc.terminate()
    assert server.finish() == 0, "the server did not stop cleanly on SIGTERM"
    lines = []
    while not server._lines.empty():
        line = server._lines.get()
        if line is not None:
            lines.append(line)
    return "\n".join(lines)
