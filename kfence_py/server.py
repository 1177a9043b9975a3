"""The statistics socket: HTTP/1.1 over a Unix socket, like a debugfs for KFENCE.

    curl --unix-socket S http://kfence/stats

The HTTP is the standard library's (http.server over socketserver's threading
Unix stream server); this module only routes and renders.  Who may connect is
decided three times: the socket is 0600 in a directory that must be 0700 and
ours, and every connection's peer uid (SO_PEERCRED) must be ours, or it gets
403 — so a socket left in a shared place by mistake still serves no one else.
The peer is checked as the connection is accepted, before a byte is read and
before it takes one of the client slots: another user cannot hold them.
Requests are bounded in size (413), in time (a deadline on the whole request,
from its first byte to its last, not on each read: the connection is dropped)
and in number at once (503).  Input the server does not understand gets 400.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import __version__
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import metrics_doc, metrics_text, registry_for
from .protocol import (
    CHECK,
    CONFIG,
    ENDPOINTS,
    FORMATS,
    JSON_TYPE,
    MAX_BODY,
    MAX_CLIENTS,
    METRICS,
    PROTOCOL,
    PROTOCOL_HEADER,
    READ_TIMEOUT,
    TEXT_TYPE,
    SocketError,
    check_socket_path,
    document,
    suggested_socket_path,
)
from .render import VIEWS, Snapshot, check_doc, check_text
from .retention import PRUNE_INTERVAL, prune
from .sources import (
    ConfigError,
    DirectorySource,
    InProcessSource,
    NoRunningProcess,
    Source,
    apply_changes,
    sweep,
)
from .state import StateError
from .symbolize import Symbolizer

log = logging.getLogger("kfence_py")

LINGER = 1.0  # seconds a refused connection is drained before it is closed
ALLOW = "GET, HEAD, POST"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _private_dir(directory: Path) -> None:
    """Create directory 0700, or check that it exists, is ours and is 0700."""
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SocketError(f"cannot create socket directory {directory}: {exc.strerror}") from None
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise SocketError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SocketError(
            f"socket directory {directory} must be private (yours, mode 0700), it is mode "
            f"{stat.S_IMODE(st.st_mode):04o} of uid {st.st_uid}: put the socket in a "
            f"directory of its own, e.g. {suggested_socket_path()}")


def bind_unix_socket(path: str | os.PathLike[str]) -> socket.socket:
    """A listening socket at path: 0600, in a private directory; a stale one replaced."""
    raw = check_socket_path(path)
    _private_dir(Path(os.fsdecode(raw)).absolute().parent)
    try:
        st = os.lstat(raw)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"{os.fsdecode(raw)} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(raw)
        except ConnectionRefusedError:
            os.unlink(raw)  # nobody listens: left by a server that died
        else:
            raise SocketError(f"{os.fsdecode(raw)} is in use by a running server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(raw)
        os.chmod(raw, 0o600)  # only in a private directory, so the moment before does not matter
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot listen on {os.fsdecode(raw)}: {exc.strerror}") from None
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it at connect."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side with one deadline for everything read until it is reset.

    A socket timeout bounds each recv(); a client sending a byte now and then
    would never meet it.  Here every recv() gets what is left of the deadline.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


def _ascii_number(text: str, max_digits: int) -> int | None:
    """text as a decimal number of ASCII digits ("²" and "٣" are not), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > max_digits:
        return None
    return int(text)


class _Reply(Exception):
    """Stop handling a request and answer with this status and message."""

    def __init__(self, status: HTTPStatus, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class StatsHandler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1, kept alive between requests."""

    protocol_version = "HTTP/1.1"
    server_version = f"kfence-py/{__version__}"
    error_message_format = "%(code)d %(message)s: %(explain)s\n"
    error_content_type = TEXT_TYPE
    # Answer even an unparsable request line with a status line and headers.
    default_request_version = "HTTP/1.1"
    server: StatsServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)
        self.peer = peer_credentials(self.request)
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The deadline runs from here: the wait for a request on a kept-alive
        # connection, its request line, headers and body.
        self._reader.deadline = time.monotonic() + self.server.read_timeout
        super().handle_one_request()

    def flush_headers(self) -> None:
        # Answers are written with the plain timeout, not what is left of the deadline.
        self.connection.settimeout(self.server.read_timeout)
        super().flush_headers()

    # The client address of a Unix socket is "", which the base class indexes.
    def address_string(self) -> str:
        return f"pid {self.peer[0]} uid {self.peer[1]}"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header(PROTOCOL_HEADER, str(PROTOCOL))
        super().end_headers()

    # --- methods ------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(body=None)

    def do_HEAD(self) -> None:
        self._dispatch(body=None, head=True)

    def do_POST(self) -> None:
        self._dispatch(body=True)

    def _not_allowed(self) -> None:
        self._send_error(_Reply(HTTPStatus.METHOD_NOT_ALLOWED,
                                f"{self.command} is not served here", {"Allow": ALLOW}))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # --- dispatch -----------------------------------------------------------

    def _dispatch(self, *, body: bool | None, head: bool = False) -> None:
        try:
            if self.headers.defects:
                # e.g. a header line without a colon, which the parser takes for a body
                raise _Reply(HTTPStatus.BAD_REQUEST, "malformed header section")
            url = urlsplit(self.path)
            query = self._query(url.query)
            fmt = query.pop("format", FORMATS[0])
            if fmt not in FORMATS:
                raise _Reply(HTTPStatus.BAD_REQUEST,
                             f"format must be {' or '.join(FORMATS)}, not {fmt!r}")
            pid = self._pid(query.pop("pid", None))
            if query:
                raise _Reply(HTTPStatus.BAD_REQUEST,
                             f"unknown query parameter(s): {', '.join(sorted(query))}")
            if url.path not in ENDPOINTS:
                raise _Reply(HTTPStatus.NOT_FOUND,
                             f"no {url.path}; try one of {', '.join(ENDPOINTS)}")
            if body and url.path not in (CONFIG, CHECK):
                raise _Reply(HTTPStatus.METHOD_NOT_ALLOWED, "POST is for /config and /check",
                             {"Allow": "GET, HEAD"})
            if url.path == CHECK:
                if not body:
                    raise _Reply(HTTPStatus.METHOD_NOT_ALLOWED, "/check is a POST",
                                 {"Allow": "POST"})
                self._read_body()  # nothing to say in it
                content, ctype = self._check(fmt, pid)
            else:
                if body:
                    self._change_config(self._read_body(), pid)
                content, ctype = self._render(url.path, fmt, pid)
        except _Reply as reply:
            self._send_error(reply)
            return
        except StateError as exc:
            self._send_error(_Reply(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)))
            return
        except TimeoutError:
            raise  # the request's deadline passed: the connection is dropped
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "the server failed; see its log")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(content)

    def _send_error(self, reply: _Reply) -> None:
        # send_error() escapes for HTML; the message stays readable in text/plain.
        body = f"{int(reply.status)} {reply.status.phrase}: {reply}\n".encode()
        self.log_error("code %d, %s", reply.status, reply)
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", TEXT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        # A body may be left unread (refused, too large): this connection is done.
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                              max_num_fields=8)
        except ValueError as exc:
            raise _Reply(HTTPStatus.BAD_REQUEST, f"bad query string: {exc}") from None
        query = dict(pairs)
        if len(query) != len(pairs):
            raise _Reply(HTTPStatus.BAD_REQUEST, "a query parameter is repeated")
        return query

    @staticmethod
    def _pid(text: str | None) -> int | None:
        if text is None:
            return None
        pid = _ascii_number(text, 10)
        if pid is None:
            raise _Reply(HTTPStatus.BAD_REQUEST, f"pid must be a process id, not {text!r}")
        return pid

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise _Reply(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        size = _ascii_number(length.strip(), 12)
        if size is None:
            raise _Reply(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}")
        if size > MAX_BODY:
            raise _Reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"a body of {size} bytes; at most {MAX_BODY} are read")
        data = self.rfile.read(size)
        if len(data) != size:
            self.close_connection = True
            raise _Reply(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        return data

    def _change_config(self, data: bytes, pid: int | None) -> None:
        changes = parse_config_body(data, self.headers.get_content_type())
        try:
            apply_changes(self.server.source, changes, pid)
        except NoRunningProcess as exc:
            raise _Reply(HTTPStatus.CONFLICT, str(exc)) from None
        except ConfigError as exc:
            raise _Reply(HTTPStatus.BAD_REQUEST, str(exc)) from None

    def _check(self, fmt: str, pid: int | None) -> tuple[bytes, str]:
        try:
            sweeps = sweep(self.server.source, pid)
        except NoRunningProcess as exc:
            raise _Reply(HTTPStatus.CONFLICT, str(exc)) from None
        doc = check_doc(sweeps, self.server.symbolizer)
        return _json(doc) if fmt == "json" else (check_text(doc).encode(), TEXT_TYPE)

    def _render(self, path: str, fmt: str, pid: int | None) -> tuple[bytes, str]:
        server = self.server
        if path == METRICS:
            if fmt == "json":
                return _json(document(metrics=metrics_doc(server.registry)))
            return metrics_text(server.registry), METRICS_CONTENT_TYPE
        snap = Snapshot.take(server.source, pid)
        if pid is not None and not snap.processes:
            raise _Reply(HTTPStatus.NOT_FOUND, f"no state of pid {pid} in {snap.source}")
        content = VIEWS[path].render(snap, as_json=fmt == "json", symbolizer=server.symbolizer)
        ctype = JSON_TYPE if fmt == "json" else TEXT_TYPE
        return content.encode(), ctype


def _json(doc: Any) -> tuple[bytes, str]:
    return (json.dumps(doc, indent=1) + "\n").encode(), JSON_TYPE


def parse_config_body(data: bytes, content_type: str) -> dict[str, object]:
    """A /config body: a JSON object, or key=value pairs (form-encoded, or one a line)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise _Reply(HTTPStatus.BAD_REQUEST, "the body is not UTF-8") from None
    if content_type == JSON_TYPE or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise _Reply(HTTPStatus.BAD_REQUEST, f"bad JSON body: {exc}") from None
        except RecursionError:
            raise _Reply(HTTPStatus.BAD_REQUEST, "the JSON body is nested too deep") from None
        if not isinstance(doc, dict):
            raise _Reply(HTTPStatus.BAD_REQUEST, "the JSON body must be an object")
        return doc
    changes: dict[str, object] = {}
    for part in text.replace("&", "\n").split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise _Reply(HTTPStatus.BAD_REQUEST, f"expected key=value, not {part!r}")
        changes[key] = value
    if not changes:
        raise _Reply(HTTPStatus.BAD_REQUEST, "empty body: send key=value pairs")
    return changes


class StatsServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The threaded HTTP server of one state source on one Unix socket."""

    daemon_threads = True
    # server_close() must not wait for a client that holds its connection open.
    block_on_close = False

    def __init__(self, path: str | os.PathLike[str], source: Source, *,
                 symbolizer: Symbolizer | None = None, max_clients: int = MAX_CLIENTS,
                 read_timeout: float = READ_TIMEOUT, keep_clean: int | None = None) -> None:
        """keep_clean: prune source's directory (retention.prune) now and then."""
        self.source = source
        self.keep_clean = keep_clean if isinstance(source, DirectorySource) else None
        self._next_prune = 0.0
        self.symbolizer = symbolizer
        self.registry = registry_for(source)
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_clients)
        self._closing: list[tuple[socket.socket, float]] = []  # refused, being drained
        self._thread: threading.Thread | None = None
        listening = bind_unix_socket(path)
        self.path = os.fsdecode(check_socket_path(path))
        self._inode = os.stat(self.path).st_ino
        # socketserver would bind without our checks: it gets the socket bound above.
        super().__init__(self.path, StatsHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening

    def process_request(self, request: Any, client_address: Any) -> None:
        # Before a byte is read or a slot taken: another user gets 403 here, at once.
        try:
            _, uid, _ = peer_credentials(request)
        except OSError as exc:
            log.debug("no peer credentials: %s", exc)
            self.shutdown_request(request)
            return
        if uid != os.geteuid():
            log.debug("refused a connection of uid %d", uid)
            self._refuse(request, HTTPStatus.FORBIDDEN,
                         f"uid {uid} may not read the state of uid {os.geteuid()}")
            return
        if not self._slots.acquire(blocking=False):
            self._refuse(request, HTTPStatus.SERVICE_UNAVAILABLE,
                         "too many clients at once; try again", {"Retry-After": "1"})
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket, status: HTTPStatus, message: str,
                headers: dict[str, str] | None = None) -> None:
        """Answer status without reading the request, from the accepting thread."""
        body = f"{int(status)} {status.phrase}: {message}\n".encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"HTTP/1.1 {int(status)} {status.phrase}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n{extra}{PROTOCOL_HEADER}: "
                f"{PROTOCOL}\r\nConnection: close\r\n\r\n").encode()
        try:
            # Never blocks the accepting thread: a new socket's buffer takes this at once.
            request.send(head + body, socket.MSG_DONTWAIT)
            request.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.debug("cannot send %d: %s", status, exc)
            request.close()
            return
        # Closed with the client's request unread, the socket would reset the
        # connection under the client's feet: it is drained first, in
        # service_actions(), until the client closes or a moment has passed.
        if len(self._closing) >= MAX_CLIENTS:
            self._closing.pop(0)[0].close()
        self._closing.append((request, time.monotonic() + LINGER))

    def service_actions(self) -> None:
        """Between requests: drain and close the sockets refused; prune now and then."""
        now = time.monotonic()
        if self.keep_clean is not None and now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            self.prune()
        keep = []
        for sock, deadline in self._closing:
            try:
                while sock.recv(4096, socket.MSG_DONTWAIT):
                    pass
                done = True  # the client closed its side
            except BlockingIOError:
                done = now >= deadline
            except OSError:
                done = True
            if done:
                sock.close()
            else:
                keep.append((sock, deadline))
        self._closing = keep

    def prune(self) -> None:
        """Apply the retention rule to the state directory served; never raises."""
        assert isinstance(self.source, DirectorySource) and self.keep_clean is not None
        try:
            prune(self.source.state_dir, self.keep_clean)
        except (OSError, StateError) as exc:
            log.warning("cannot prune %s: %s", self.source.state_dir, exc)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is no server error.
        log.debug("connection ended with an error", exc_info=True)

    def start(self) -> StatsServer:
        """Serve in a daemon thread (pruning first); returns self."""
        if self.keep_clean is not None:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            self.prune()
        self._thread = threading.Thread(target=self.serve_forever, name="kfence-py-server",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, and remove the socket if it is still ours."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        for sock, _ in self._closing:
            sock.close()
        self._closing.clear()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.debug("cannot remove %s: %s", self.path, exc)
        if self.symbolizer is not None:
            self.symbolizer.close()

    def __enter__(self) -> StatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(path: str | os.PathLike[str], *, symbolize: bool = True,
          max_clients: int = MAX_CLIENTS) -> StatsServer:
    """Serve the state of this process on a Unix socket, in a background thread.

    Returns the running server; ``close()`` it (or use it as a context
    manager) to stop.  Until ``kfence_py.enable()`` has started the library
    the views list no process.
    """
    symbolizer = Symbolizer() if symbolize else None
    return StatsServer(path, InProcessSource(), symbolizer=symbolizer,
                       max_clients=max_clients).start()
