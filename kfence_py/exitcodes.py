"""Every exit status kfence-py can return, in one place.

``kfence-py run`` returns the command's own status, so its own failures use
the codes shells and tools such as env(1) and timeout(1) reserve for the
wrapper: 125 (the wrapper failed), 126 (the command cannot be run as asked),
127 (no such command).  The client commands use small distinct codes, one per
cause a script may want to tell apart.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # a generic failure (the demo found no bug, ...)
    USAGE = 2  # bad arguments (argparse's own code)
    NO_SERVER = 3  # no socket (or state file) at the path given
    REFUSED = 4  # the socket exists but nobody accepts on it (a stale socket)
    VERSION_MISMATCH = 5  # a state file or server of another kfence_py version
    PERMISSION = 6  # the server refused us (403) or the file system did
    BAD_RESPONSE = 7  # the server answered with an error or something unreadable
    BAD_STATE = 8  # a state file that is truncated or not a kfence_py state
    CORRUPTED = 9  # `check`: a live object's canary had changed
    NOT_CHECKED = 10  # `check`: a process did not look in time (it made no sampled allocation)
    RUN_FAILED = 125  # `run` itself could not start (socket, state directory, ...)
    CANNOT_PRELOAD = 126  # `run`: static, setuid or foreign binary; not executable
    NOT_FOUND = 127  # `run`: no such command


class CliError(Exception):
    """A failure to report as one plain line on stderr and a known exit status."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code
