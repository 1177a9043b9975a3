"""The statistics socket: a real server on a real Unix socket, real clients."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
from ctl import CAP, Driven
from prometheus_client.parser import text_string_to_metric_families

import kfence_py
from kfence_py.client import UnixHTTPConnection, request
from kfence_py.contract import STATE_VERSION
from kfence_py.exitcodes import CliError, ExitCode
from kfence_py.server import MAX_BODY, SocketError, StatsServer
from kfence_py.sources import DirectorySource
from kfence_py.symbolize import Symbolizer

GET_STATS = b"GET /stats HTTP/1.1\r\nHost: kfence\r\nConnection: close\r\n\r\n"


def raw(path, data: bytes) -> bytes:
    """Send data on a fresh connection; everything the server says until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CAP)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def server(live, short_dir):
    _, _, state_dir = live
    with StatsServer(short_dir / "sock" / "s", DirectorySource(state_dir),
                     symbolizer=Symbolizer()).start() as srv:
        yield srv


# --- the socket itself ---------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory(server):
    path = server.path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_socket_is_removed_on_close(live, short_dir):
    srv = StatsServer(short_dir / "s", DirectorySource(live[2])).start()
    assert os.path.exists(srv.path)
    srv.close()
    assert not os.path.exists(srv.path)


def test_refuses_a_directory_others_can_enter(live, short_dir):
    shared = short_dir / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(SocketError, match="must be private"):
        StatsServer(shared / "s", DirectorySource(live[2]))


def test_socket_path_length_is_checked(live, short_dir):
    long_path = short_dir / ("x" * 120)
    with pytest.raises(SocketError, match="at most 107"):
        StatsServer(long_path, DirectorySource(live[2]))
    with pytest.raises(CliError, match="at most 107") as err:
        request(long_path, "GET", "/stats")
    assert err.value.code == ExitCode.USAGE


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(live, short_dir):
    path = short_dir / "s"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with StatsServer(path, DirectorySource(live[2])).start():
        assert request(path, "GET", "/stats").status == 200
        with pytest.raises(SocketError, match="in use"):
            StatsServer(path, DirectorySource(live[2]))


# --- who may connect ---------------------------------------------------------------


def _as_nobody(path) -> bytes:
    """GET /stats from a forked child running as user nobody: what it got, or its error."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            answer = raw(path, GET_STATS)[:4096]
        except OSError as exc:
            answer = f"error {type(exc).__name__}".encode()
        os.write(write_end, answer)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        answer = f.read()
    os.waitpid(child, 0)
    return answer


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


@needs_root
def test_other_users_cannot_reach_the_socket(server):
    assert _as_nobody(server.path) == b"error PermissionError"


@needs_root
def test_peer_uid_is_checked_even_when_the_file_system_lets_others_in(server, short_dir):
    # Permissions loosened by mistake: SO_PEERCRED still keeps other users out.
    for directory in (short_dir, os.path.dirname(server.path)):
        os.chmod(directory, 0o711)
    os.chmod(server.path, 0o666)
    answer = _as_nobody(server.path)
    assert status_of(answer) == 403, answer
    assert b"uid 65534 may not read" in answer
    assert request(server.path, "GET", "/stats").status == 200, "the owner is still served"


# --- what it serves ----------------------------------------------------------------------


def test_stats_text_and_json(server, live):
    _, pid, _ = live
    text = request(server.path, "GET", "/stats").text
    assert f"pid {pid} (running):" in text
    assert "total allocations: " in text and "pool size: 255" in text
    assert "skipped allocations (capacity): 0" in text
    doc = request(server.path, "GET", "/stats", query={"format": "json"}).json()
    assert doc["protocol"] == 1
    (proc,) = doc["processes"]
    assert proc["pid"] == pid and proc["running"] is True
    assert proc["stats"]["currently_allocated"] >= 5
    assert proc["stats"]["sample_rate"] == 1


def test_objects_are_placed_in_their_modules(server, live, target):
    _, pid, _ = live
    doc = request(server.path, "GET", "/objects", query={"format": "json"}).json()
    held = [o for o in doc["objects"] if o["size"] == 48 and o["state"] == "allocated"]
    assert len(held) == 5 and {o["pid"] for o in held} == {pid}
    frames = held[0]["allocated"]["stack"]
    assert frames[0]["module"] == str(target), "the first frame is the target's own code"
    functions = [s["function"] for f in frames for s in f["source"]]
    assert "hold" in functions
    text = request(server.path, "GET", "/objects").text
    assert f"pid {pid} (running)" in text and "size=48, cache=malloc, state=allocated" in text
    assert " in hold " in text and "target.c:" in text


def test_reports_of_a_running_process(server, live):
    driven, pid, _ = live
    assert driven.ask("uaf") == "ok"
    doc = request(server.path, "GET", "/reports", query={"format": "json"}).json()
    (report,) = doc["reports"]
    assert report["pid"] == pid and report["kind"] == "use-after-free"
    assert report["access"] == "write" and report["function"] == "main"
    assert report["object"]["size"] == 24
    text = request(server.path, "GET", "/reports").text
    assert "BUG: KFENCE: use-after-free write in main" in text


def test_metrics_are_prometheus_text(server, live):
    _, pid, _ = live
    text = request(server.path, "GET", "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    me = (("pid", str(pid)),)
    stats = request(server.path, "GET", "/stats", query={"format": "json"}).json()
    expected = stats["processes"][0]["stats"]
    assert samples[("kfence_allocations_total", me)] == expected["total_allocations"]
    assert samples[("kfence_allocated_objects", me)] == expected["currently_allocated"] >= 5
    assert samples[("kfence_pool_objects", me)] == 255
    assert samples[("kfence_skipped_allocations_total", (*me, ("reason", "capacity")))] == 0
    assert samples[("kfence_processes", (("state", "running"),))] == 1
    assert samples[("kfence_info", (("state_version", str(STATE_VERSION)),
                                    ("version", kfence_py.__version__)))] == 1
    assert samples[("kfence_sample_interval_seconds", me)] == 0.01
    doc = request(server.path, "GET", "/metrics", query={"format": "json"}).json()
    assert "kfence_bugs" in {m["name"] for m in doc["metrics"]}


def test_config_get_and_post(server, live):
    _, pid, _ = live
    assert request(server.path, "GET", "/config").text.startswith(
        f"pid {pid} (running): enabled=1 sample_interval=10 sample_rate=1 burst=0")
    resp = request(server.path, "POST", "/config", body=b"sample_interval=5&burst=2")
    assert "sample_interval=5 sample_rate=1 burst=2" in resp.text
    resp = request(server.path, "POST", "/config", query={"format": "json", "pid": pid},
                   body=json.dumps({"enabled": False, "sample_rate": 7}).encode(),
                   content_type="application/json")
    (proc,) = resp.json()["processes"]
    assert (proc["enabled"], proc["sample_rate"], proc["sample_interval"]) == (0, 7, 5)


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = UnixHTTPConnection(server.path)
    try:
        for endpoint in ("/stats", "/config", "/metrics"):
            conn.request("GET", endpoint)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            assert resp.getheader("X-Kfence-Protocol") == "1"
    finally:
        conn.close()


# --- bad requests --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "status"), [
    (b"this is not http\r\n\r\n", 400),
    (b"GET /stats HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /nowhere HTTP/1.1\r\nHost: k\r\n\r\n", 404),
    (b"GET /stats?format=xml HTTP/1.1\r\nHost: k\r\n\r\n", 400),
    (b"GET /stats?colour=red HTTP/1.1\r\nHost: k\r\n\r\n", 400),
    (b"GET /stats?pid=12ab HTTP/1.1\r\nHost: k\r\n\r\n", 400),
    (b"GET /stats?pid=1&pid=2 HTTP/1.1\r\nHost: k\r\n\r\n", 400),
    (b"GET /stats?pid=999999999 HTTP/1.1\r\nHost: k\r\n\r\n", 404),
    (b"PUT /stats HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\n\r\n", 405),
    (b"POST /stats HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\n\r\na=1", 405),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 99999999999\r\n\r\n", 413),
    (b"POST /config HTTP/1.1\r\nHost: k\r\n\r\n", 411),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: -4\r\n\r\n", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 9\r\n\r\nnot a kv!", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\n{bad}", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\n\r\n[1]", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 13\r\n\r\nnum_objects=3", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 17\r\n\r\nsample_rate=lots!", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 4\r\n\r\n\xff\xfe=1", 400),
    (b"POST /config HTTP/1.1\r\nHost: k\r\nContent-Length: 40\r\n\r\nburst=1", 400),
], ids=lambda x: x[:40].decode(errors="replace") if isinstance(x, bytes) else str(x))
def test_bad_requests_get_4xx_and_the_server_carries_on(server, data, status):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CAP)
        s.connect(server.path)
        s.sendall(data)
        if data.endswith(b"burst=1"):
            s.shutdown(socket.SHUT_WR)  # the body ends before its Content-Length
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert status_of(answer) == status, answer[:300]
    assert b"X-Kfence-Protocol: 1" in answer
    assert raw(server.path, GET_STATS).startswith(b"HTTP/1.1 200 "), "still serving"


def test_a_config_change_that_is_refused_changes_nothing(server, live):
    with pytest.raises(CliError, match="cannot change at run time"):
        request(server.path, "POST", "/config", body=b"sample_rate=3&num_objects=3")
    assert "sample_rate=1 " in request(server.path, "GET", "/config").text


def test_a_silent_client_is_dropped_after_the_read_timeout(live, short_dir):
    with StatsServer(short_dir / "s", DirectorySource(live[2]), read_timeout=0.3).start() as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CAP)
            s.connect(srv.path)
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: k")  # and then nothing
            assert s.recv(65536) == b"", "closed without an answer"
        assert raw(srv.path, GET_STATS).startswith(b"HTTP/1.1 200 ")


def test_clients_beyond_the_limit_get_503(live, short_dir):
    with StatsServer(short_dir / "s", DirectorySource(live[2]), max_clients=2).start() as srv:
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        try:
            for s in idle:
                s.connect(srv.path)
            # Accepted in order: the first two hold both slots.
            answer = raw(srv.path, GET_STATS)
            assert status_of(answer) == 503 and b"too many clients" in answer
        finally:
            for s in idle:
                s.close()
        # The slots come back as the handlers see the connections close.
        for _ in range(200):
            answer = raw(srv.path, GET_STATS)
            if status_of(answer) == 200:
                break
        assert status_of(answer) == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(server, live):
    _, pid, _ = live

    def curl(*args):
        proc = subprocess.run(["curl", "-sS", "--fail-with-body", "--unix-socket",
                               server.path, *args], capture_output=True, text=True,
                              timeout=CAP, check=False)
        return proc.returncode, proc.stdout

    code, out = curl("http://kfence/stats")
    assert code == 0 and f"pid {pid} (running):" in out
    code, out = curl("http://kfence/metrics")
    assert code == 0 and f'kfence_allocated_objects{{pid="{pid}"}}' in out
    code, out = curl("-d", "sample_interval=7", "http://kfence/config?format=json")
    assert code == 0 and json.loads(out)["processes"][0]["sample_interval"] == 7
    code, out = curl("http://kfence/objects?format=json")
    assert code == 0 and json.loads(out)["objects"]
    code, out = curl("-d", "sample_interval=4000000", "http://kfence/config")
    assert code == 22 and "sample_interval: expected an integer in 0..3600000" in out


# --- post-mortem, and other sources ------------------------------------------------------


def test_a_process_killed_by_sigkill_is_still_served(server, live):
    driven, pid, _ = live
    before = request(server.path, "GET", "/stats", query={"format": "json"}).json()
    driven.proc.kill()
    driven.finish()
    after = request(server.path, "GET", "/stats", query={"format": "json"}).json()
    (proc,) = after["processes"]
    assert proc["running"] is False
    assert proc["stats"]["currently_allocated"] == \
        before["processes"][0]["stats"]["currently_allocated"]
    assert f"pid {pid} (exited):" in request(server.path, "GET", "/stats").text
    with pytest.raises(CliError, match="no running process") as err:
        request(server.path, "POST", "/config", body=b"enabled=0")
    assert "409" in str(err.value)


def test_serve_in_process(short_dir, tmp_path):
    """kfence_py.serve(): the state of the process that calls it."""
    sock = short_dir / "s"
    script = textwrap.dedent(f"""
        import sys, kfence_py
        kfence_py.enable(sample_rate=1)
        buf = kfence_py.alloc(100)
        server = kfence_py.serve({str(sock)!r})
        print("ready", buf.address, flush=True)
        sys.stdin.readline()
        server.close()
        print("closed", flush=True)
    """)
    driven = Driven([sys.executable, "-c", script], os.environ, tmp_path)
    try:
        _, address = driven.readline().split()
        doc = request(sock, "GET", "/stats", query={"format": "json"}).json()
        (proc,) = doc["processes"]
        assert proc["pid"] == driven.proc.pid and proc["running"] is True
        objects = request(sock, "GET", "/objects", query={"format": "json"}).json()["objects"]
        assert int(address) in {o["address"] for o in objects if o["state"] == "allocated"}
        request(sock, "POST", "/config", body=b"sample_interval=9&sample_rate=0")
        assert "sample_interval=9 sample_rate=0" in request(sock, "GET", "/config").text
        assert driven.ask("") == "closed"
        assert not sock.exists()
    finally:
        driven.kill()


def test_no_server_and_a_stale_socket_are_plain_errors(short_dir):
    with pytest.raises(CliError, match="no socket at") as err:
        request(short_dir / "none", "GET", "/stats")
    assert err.value.code == ExitCode.NO_SERVER
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "stale"))
    stale.close()
    with pytest.raises(CliError, match="connection refused") as err:
        request(short_dir / "stale", "GET", "/stats")
    assert err.value.code == ExitCode.REFUSED


def test_a_server_of_another_protocol_is_a_version_mismatch(short_dir):
    # Not our server: it answers HTTP without the protocol header.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_dir / "other"))
    listener.listen(1)

    def answer_once():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(CliError, match="protocol none") as err:
            request(short_dir / "other", "GET", "/stats")
        assert err.value.code == ExitCode.VERSION_MISMATCH
    finally:
        thread.join(timeout=CAP)
        listener.close()


# --- POST /check: the canaries of live objects -------------------------------------


def test_post_check_has_the_processes_look_and_answers_what_they_found(start_target,
                                                                        short_dir):
    driven, pid, state_dir = start_target({"sample_rate": 1, "placement": "left"})
    assert driven.ask("hold 3") == "ok"
    assert driven.ask("smash") == "ok"
    with StatsServer(short_dir / "sock" / "s", DirectorySource(state_dir)).start() as srv:
        answer: dict[str, object] = {}

        def post() -> None:
            answer["reply"] = request(srv.path, "POST", "/check", query={"format": "json"},
                                      body=b"")

        poster = threading.Thread(target=post)
        poster.start()
        # The process looks at its next sampled allocation.
        while poster.is_alive():
            assert driven.ask("churn 10") == "ok"
            poster.join(0.05)
        doc = answer["reply"].json()
        (check,) = doc["checks"]
        assert check["pid"] == pid and check["done"] and check["live"] >= 3
        (report,) = check["reports"]
        assert report["kind"] == "memory corruption"
        assert report["explanation"].startswith("A canary check of live objects found this")
        assert report["object"]["size"] == 48
        assert report["address"] == report["object"]["address"] + 48
        # Only a POST asks.
        get = raw(srv.path, b"GET /check HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(get) == 405 and b"Allow: POST" in get
