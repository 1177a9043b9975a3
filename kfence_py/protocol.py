"""The statistics socket's protocol, shared by the server and its clients.

HTTP/1.1 over a Unix socket: the paths, the query, the version header every
answer carries, the JSON envelope, the limits and the socket path rule.  Plain
Python only, so that a client (``kfence-py stats --socket``) loads neither the
server nor prometheus_client nor the library's state readers to ask.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

PROTOCOL = 1  # of the JSON documents and the HTTP interface; bump on incompatible change
PROTOCOL_HEADER = "X-Kfence-Protocol"  # on every answer, errors too

# Paths.  GET any but /check; POST /config changes the runtime options, POST /check
# has the processes check the canaries of their live objects and answers what they found.
STATS, OBJECTS, REPORTS, METRICS, CONFIG = "/stats", "/objects", "/reports", "/metrics", "/config"
CHECK = "/check"
ENDPOINTS = (STATS, OBJECTS, REPORTS, METRICS, CONFIG, CHECK)
FORMATS = ("text", "json")  # ?format=, text by default; ?pid=N keeps one process
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"

# Limits and defaults.
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, the last one a NUL
MAX_BODY = 16 * 1024  # a /config body is a few key=value pairs
READ_TIMEOUT = 10.0  # seconds a client may take to send a whole request
MAX_CLIENTS = 16  # connections served at once; more get 503
MAX_CLIENTS_LIMIT = 1024  # the most --max-clients may ask for: a thread each
CLIENT_TIMEOUT = 30.0  # seconds a client waits for an answer


def query(*, as_json: bool, pid: int | None = None) -> dict[str, object]:
    """The query of a view: its format, and the one process asked for."""
    out: dict[str, object] = {"format": "json" if as_json else "text"}
    if pid is not None:
        out["pid"] = pid
    return out


def document(**body: Any) -> dict[str, Any]:
    """A JSON answer: the protocol version, then body ({"protocol": 1, ...})."""
    return {"protocol": PROTOCOL, **body}


class SocketError(Exception):
    """The socket cannot be created or reached where asked; the message says why."""


def suggested_socket_path() -> str:
    """A socket path to suggest to the user, built only from what is set.

    $XDG_RUNTIME_DIR (private to the user, made by the login manager) when
    it is set; else a directory named after the uid in the temporary
    directory, as tmux's /tmp/tmux-UID (the server creates it 0700, or
    refuses it if someone else made it first).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "kfence", "stats.sock")
    return os.path.join(tempfile.gettempdir(), f"kfence-{os.geteuid()}", "stats.sock")


def check_socket_path(path: str | os.PathLike[str]) -> bytes:
    """path as bytes for sun_path, or SocketError when it does not fit."""
    raw = os.fsencode(path)
    if len(raw) > SUN_PATH_MAX:
        raise SocketError(f"socket path {os.fsdecode(raw)!r} is {len(raw)} bytes; a Unix "
                          f"socket path holds at most {SUN_PATH_MAX}: use a shorter one")
    if not raw:
        raise SocketError("empty socket path")
    return raw
