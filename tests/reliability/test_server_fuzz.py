"""Hostile clients of the statistics socket: the server answers 4xx or closes, stays
up, and its memory stays bounded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"\x00\xff", b"", b"G" * 300])
PATHS = st.one_of(st.sampled_from([b"/stats", b"/objects", b"/reports", b"/metrics",
                                   b"/config", b"/stats?format=json", b"/../../etc/passwd",
                                   b"/config?format=json&x=" + b"%" * 50,
                                   # digits int() takes but a pid is not written with
                                   b"/stats?pid=%C2%B2", b"/objects?pid=%D9%A3",
                                   b"/config?pid=%EF%BC%91", b"/stats?pid=\xc2\xb2"]),
                  st.binary(max_size=200))
HEADERS = st.lists(st.one_of(
    st.sampled_from([b"Host: kfence", b"Content-Length: 5", b"Content-Length: -1",
                     b"Content-Length: 99999999999", b"Transfer-Encoding: chunked",
                     b"X: " + b"y" * 70000, b"Connection: keep-alive", b":::",
                     b"Content-Length: \xb2", b"Content-Length: \xd9\xa3",
                     b"Content-Type: application/json"]),
    st.binary(max_size=100)), max_size=6)
BODIES = [b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
          "burst=\uff11".encode(), '{"burst": "\u00b2"}'.encode()]
REQUEST = st.tuples(METHODS, PATHS, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b""]),
                    HEADERS, st.one_of(st.binary(max_size=300), st.sampled_from(BODIES)))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Path, psutil.Process]]:
    with tempfile.TemporaryDirectory(prefix="kf") as tmp:
        private = Path(tmp) / "s"
        private.mkdir(mode=0o700)
        states = Path(tmp) / "states"
        states.mkdir(mode=0o700)
        path = private / "sock"
        proc = subprocess.Popen([sys.executable, "-m", "kfence_py", "serve", "--state-dir",
                                 str(states), "--socket", str(path)], cwd="/",
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.05)
        assert path.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        yield path, psutil.Process(proc.pid)
        proc.terminate()
        proc.wait(timeout=30)


def exchange(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early on a bad request: that is allowed
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


def alive(path: Path) -> bool:
    answer = exchange(path, b"GET /stats HTTP/1.1\r\nHost: kfence\r\nConnection: close\r\n\r\n")
    return answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200")


@pytest.mark.slow
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUEST)
@example(request=(b"GET", b"/stats?pid=%C2%B2", b"HTTP/1.1", [b"Host: k"], b""))
@example(request=(b"POST", b"/config", b"HTTP/1.1", [b"Content-Length: \xb2"], b"burst=1"))
@example(request=(b"POST", b"/config", b"HTTP/1.1",
                  [b"Content-Type: application/json", b"Content-Length: 10000"], BODIES[0]))
def test_malformed_requests(server, request):
    path, _ = server
    method, target, version, headers, body = request
    raw = b" ".join(filter(None, [method, target, version])) + b"\r\n"
    raw += b"".join(h.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n" for h in headers)
    raw += b"\r\n" + body
    answer = exchange(path, raw)
    if answer:
        status = answer.split(b" ", 2)[1] if answer.count(b" ") >= 2 else b""
        assert status[:1] in (b"2", b"4", b"5") and status != b"500", answer[:200]


@pytest.mark.slow
def test_many_connections_and_slow_clients_leave_it_up_and_bounded(server):
    path, proc = server
    assert alive(path)
    rss_before = proc.memory_info().rss
    # slow clients: half a request line each, held open together
    slow = []
    for _ in range(40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(b"GET /sta")
        slow.append(s)
    for s in slow:
        s.close()
    for i in range(1500):
        exchange(path, b"GET /stats HTTP/1.1\r\nHost: k\r\n" + b"X: " + b"z" * (i % 9000)
                 + b"\r\nConnection: close\r\n\r\n")
    assert alive(path)
    growth = proc.memory_info().rss - rss_before
    assert growth < 20 << 20, f"server grew by {growth >> 20} MiB over 1500 requests"
    assert proc.status() != psutil.STATUS_ZOMBIE


def test_the_server_survived_everything(server):
    path, proc = server
    assert proc.is_running() and alive(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
