"""The statistics socket against clients that hold it or send what it does not expect:
another user's silent connections, a slow client, odd numbers and deep JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from ctl import CAP
from test_server import GET_STATS, raw, status_of

from kfence_py.client import request
from kfence_py.server import MAX_CLIENTS, StatsServer
from kfence_py.sources import DirectorySource

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


@pytest.fixture
def server(live, short_dir):
    with StatsServer(short_dir / "sock" / "s", DirectorySource(live[2]),
                     read_timeout=1.0).start() as srv:
        yield srv


# Started as root (nobody cannot exec root's python), it becomes nobody before connecting.
_SILENT = textwrap.dedent(f"""
    import os, socket, sys
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
    socks = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(sys.argv[1])
        socks.append(s)
    print("connected", flush=True)
    sys.stdin.readline()
    for s in socks:
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        print(data.split(b" ", 2)[1].decode() if data else "nothing", flush=True)
""")


@needs_root
def test_silent_connections_of_another_user_take_no_client_slot(server, short_dir):
    # The socket is let open to others by mistake: they still get nothing, not even a slot.
    for directory in (short_dir, os.path.dirname(server.path)):
        os.chmod(directory, 0o711)
    os.chmod(server.path, 0o666)
    count = MAX_CLIENTS + 8
    other = subprocess.Popen([sys.executable, "-c", _SILENT, server.path, str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd="/")
    try:
        assert other.stdout.readline() == "connected\n"
        # every one of them is connected and has sent nothing: the owner is served
        for _ in range(MAX_CLIENTS + 1):
            assert request(server.path, "GET", "/stats").status == 200
        out, _ = other.communicate("go\n", timeout=CAP)
    finally:
        other.kill()
        other.wait()
    assert out.split() == ["403"] * count


def test_a_slow_client_is_cut_at_the_deadline(server):
    """A byte at a time, each well within any per-read timeout: the request as a whole
    still has a deadline, and the connection is dropped at it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: kfence\r\nX-Slow: ")
        s.settimeout(0.05)
        given_up = time.monotonic() + CAP
        cut = False
        while not cut and time.monotonic() < given_up:
            try:
                s.sendall(b"z")
                cut = s.recv(4096) == b""
            except TimeoutError:
                continue  # nothing from the server yet: one more byte
            except (BrokenPipeError, ConnectionResetError):
                cut = True
        assert cut, "the server still reads a request that never ends"
    assert request(server.path, "GET", "/stats").status == 200


def test_an_idle_kept_alive_connection_is_cut_too(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CAP)
        s.connect(server.path)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: kfence\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # the answer, then the end when the deadline passes
            data += chunk
    assert status_of(data) == 200


def _post(body: bytes, *headers: str, length: str | None = None,
          content_type: str = "application/x-www-form-urlencoded") -> bytes:
    length = str(len(body)) if length is None else length
    head = ["POST /config HTTP/1.1", "Host: kfence", "Connection: close",
            f"Content-Type: {content_type}", f"Content-Length: {length}", *headers]
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


ODD = {
    "superscript pid": b"GET /stats?pid=\xc2\xb2 HTTP/1.1\r\nHost: k\r\n\r\n",
    "encoded superscript pid": b"GET /stats?pid=%C2%B2 HTTP/1.1\r\nHost: k\r\n\r\n",
    "arabic-indic pid": b"GET /objects?pid=%D9%A3 HTTP/1.1\r\nHost: k\r\n\r\n",
    "fullwidth pid": b"GET /reports?pid=%EF%BC%91 HTTP/1.1\r\nHost: k\r\n\r\n",
    "superscript Content-Length": _post(b"burst=1", length="\xb2"),
    "utf-8 digit Content-Length": _post(b"burst=1", length="\xd9\xa1"),
    "JSON nested 5000 deep": _post(b'{"burst": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                   content_type="application/json"),
    "JSON objects nested 3000 deep": _post(b'{"":' * 3000 + b"1" + b"}" * 3000,
                                           content_type="application/json"),
    "fullwidth option value": _post("burst=\uff11".encode()),
    "superscript option value in JSON": _post('{"burst": "\u00b2"}'.encode(),
                                              content_type="application/json"),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_input_gets_400(server, name):
    answer = raw(server.path, ODD[name])
    assert status_of(answer) == 400, answer[:300]
    assert status_of(raw(server.path, GET_STATS)) == 200
    config = json.loads(request(server.path, "GET", "/config",
                                query={"format": "json"}).text)
    assert config["processes"][0]["burst"] == 0, "nothing was changed"
