"""The client side of the statistics socket: HTTP/1.1 over a Unix socket.

Every failure a user can meet — no socket, a stale one, another version's
server, a refusal — becomes a CliError: one plain line and a named exit code.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .exitcodes import CliError, ExitCode
from .protocol import CLIENT_TIMEOUT, PROTOCOL, PROTOCOL_HEADER, SocketError, check_socket_path


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket; the host name is only for the Host header."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = CLIENT_TIMEOUT) -> None:
        super().__init__("kfence", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fsencode(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def request(path: str | os.PathLike[str], method: str, endpoint: str, *,
            query: dict[str, object] | None = None, body: bytes | None = None,
            content_type: str = "application/x-www-form-urlencoded",
            timeout: float = CLIENT_TIMEOUT) -> Response:
    """One request; CliError for anything but a 2xx answer of this protocol."""
    where = os.fsdecode(path)
    try:
        check_socket_path(path)
    except SocketError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    url = endpoint + (f"?{urlencode(query)}" if query else "")
    conn = UnixHTTPConnection(path, timeout)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, url, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        protocol = resp.getheader(PROTOCOL_HEADER)
    except FileNotFoundError:
        raise CliError(f"no socket at {where} (is `kfence-py run --socket` or "
                       "`kfence-py serve` running?)", ExitCode.NO_SERVER) from None
    except ConnectionRefusedError:
        raise CliError(f"connection refused at {where}: the server is gone",
                       ExitCode.REFUSED) from None
    except PermissionError:
        raise CliError(f"permission denied: {where} belongs to another user",
                       ExitCode.PERMISSION) from None
    except (http.client.HTTPException, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CliError(f"{where}: no valid answer: {reason or type(exc).__name__}",
                       ExitCode.BAD_RESPONSE) from None
    finally:
        conn.close()
    if protocol != str(PROTOCOL):
        raise CliError(f"{where} speaks kfence-py protocol {protocol or 'none'}, this "
                       f"client protocol {PROTOCOL}: use the kfence-py that serves it",
                       ExitCode.VERSION_MISMATCH)
    if resp.status == 403:
        raise CliError(f"{where}: refused: {_first_line(data)}", ExitCode.PERMISSION)
    if not 200 <= resp.status < 300:
        raise CliError(f"{where}: {_first_line(data)}", ExitCode.BAD_RESPONSE)
    return Response(resp.status, data)


def _first_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "(empty answer)"
