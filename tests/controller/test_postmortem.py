"""Post-mortem and off-machine symbolization.

The state keeps a module table (path, load address and GNU build-id of every
module a recorded stack reached), so the frames of a process that has exited
are placed in their modules and symbolized; and a module's debug information
is found by its build-id: in a debug directory (``.build-id/xx/rest.debug``),
or from a real debuginfod server (Debian's ``debuginfod``, on loopback only).
The module here is a library dlopen()ed after the process started, stripped
the way distributions ship them, and gone from the machine when its frames
are symbolized.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ctl import CAP, PROGS, kfence_cli, line_of
from debian_packages import needs_debian

from kfence_py.elf import build_id

PLUGIN = PROGS / "plugin.c"
UAF = "use-after-free"


@dataclass(frozen=True)
class Built:
    host: Path
    plugin: Path  # with its debug information
    stripped: Path  # as a distribution ships it (same build-id)
    debug: Path  # its debug information alone (objcopy --only-keep-debug)
    build_id: str


@pytest.fixture(scope="module")
def built(programs, tmp_path_factory) -> Built:
    host = programs.build(PROGS / "postmortem.c")
    plugin = programs.build(PLUGIN, flags=["-shared", "-fPIC"])
    out = tmp_path_factory.mktemp("plugin")
    debug, stripped = out / "libplugin.debug", out / "libplugin.so"
    subprocess.run(["objcopy", "--only-keep-debug", str(plugin), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(plugin), "-o", str(stripped)], check=True)
    found = build_id(plugin)
    assert found is not None and build_id(stripped) == found == build_id(debug)
    return Built(host, plugin, stripped, debug, found)


def run_to_exit(programs, built: Built, plugin: Path, state_dir: Path, mode: str = "") -> int:
    """Run the host with plugin until it exits; its pid (its state file stays).
    mode: "" (a use-after-free), "keep" (no report) or "fork" (a child too, no report)."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    run = programs.run(built.host, str(plugin), *([mode] if mode else []),
                       options={"sample_rate": 1, "state_dir": state_dir})
    assert run.returncode == (0 if mode else 66), run.stderr[-3000:]
    assert (f"BUG: KFENCE: {UAF} read in plugin_uaf" in run.stderr) == (not mode)
    return min(int(state.stem) for state in state_dir.glob("*.state"))


def no_debuginfod() -> dict[str, str]:
    """The environment of a command that must find nothing through debuginfod."""
    return {"DEBUGINFOD_URLS": ""}


def plugin_frames(stack: list[dict], plugin: Path) -> list[dict]:
    return [f for f in stack if f["module"] == str(plugin)]


def source_line(frame: dict) -> tuple[str, int] | None:
    return next(((Path(s["file"]).name, s["line"]) for s in frame["source"] if s["file"]),
                None)


def test_objects_of_an_exited_process_are_symbolized(programs, built, short_dir):
    """No report read the maps: the allocation's own stack recorded the module."""
    state_dir = short_dir / "state"
    pid = run_to_exit(programs, built, built.plugin, state_dir, "keep")
    objects = kfence_cli("objects", "--state-dir", str(state_dir), "--json", cwd=short_dir,
                         env=no_debuginfod())
    assert objects.returncode == 0, objects.stderr
    kept = [o for o in json.loads(objects.stdout)["objects"] if o["state"] == "allocated"
            and plugin_frames(o["allocated"]["stack"], built.plugin)]
    assert kept and all(o["pid"] == pid and not o["running"] for o in kept)
    frame = kept[0]["allocated"]["stack"][0]
    assert frame["module"] == str(built.plugin) and frame["build_id"] == built.build_id
    assert source_line(frame) == ("plugin.c", line_of("plugin_keep", PLUGIN))
    assert frame["offset"] != frame["pc"]  # placed: the link-time address, not the raw pc


def test_a_forked_child_keeps_the_modules_it_inherited(programs, built, short_dir):
    """The child's own state file starts with the table as its memory had it at the fork."""
    state_dir = short_dir / "state"
    parent = run_to_exit(programs, built, built.plugin, state_dir, "fork")
    objects = kfence_cli("objects", "--state-dir", str(state_dir), "--json", cwd=short_dir,
                         env=no_debuginfod())
    found = {(o["pid"], o["size"]): o for o in json.loads(objects.stdout)["objects"]}
    [child] = {pid for pid, _ in found} - {parent}
    frame = found[(child, 48)]["allocated"]["stack"][0]
    assert frame["build_id"] == built.build_id
    assert source_line(frame) == ("plugin.c", line_of("plugin_keep", PLUGIN))


def test_reports_of_an_exited_process_are_symbolized(programs, built, short_dir):
    state_dir = short_dir / "state"
    pid = run_to_exit(programs, built, built.plugin, state_dir)
    reports = kfence_cli("reports", "--state-dir", str(state_dir), "--json", cwd=short_dir,
                         env=no_debuginfod())
    [record] = json.loads(reports.stdout)["reports"]
    assert record["kind"] == UAF and record["function"] == "plugin_uaf"
    assert source_line(record["stack"][0]) == ("plugin.c", line_of("plugin_uaf_use", PLUGIN))
    assert source_line(record["allocated"]["stack"][0]) == (
        "plugin.c", line_of("plugin_uaf_alloc", PLUGIN))
    [module] = [m for m in record["modules"] if m["path"] == str(built.plugin)]
    assert module["build_id"] == built.build_id
    access = record["stack"][0]
    assert access["pc"] - module["load_address"] == access["offset"]
    text = kfence_cli("reports", "--state-dir", str(state_dir), cwd=short_dir,
                      env=no_debuginfod()).stdout
    assert f"pid {pid} (exited)" in text
    assert f"plugin.c:{line_of('plugin_uaf_use', PLUGIN)}" in text


@pytest.mark.slow
def test_json_records_symbolized_off_the_machine_through_a_debug_directory(
        programs, built, short_dir):
    """run --json-reports on one machine; the module gone, symbolize by build-id."""
    here = short_dir / "libplugin.so"
    shutil.copy(built.stripped, here)
    records = short_dir / "bugs.jsonl"
    run = kfence_cli("run", "--sample-rate", "1", "--json-reports", str(records), "--",
                     str(built.host), str(here), cwd=short_dir, env=no_debuginfod())
    assert run.returncode == 66, run.stderr
    here.unlink()  # another machine: the module is not there
    # The test-suite mode also checks leaks at exit: the plugin's kept object is one.
    [record] = [r for r in map(json.loads, records.read_text().splitlines())
                if r["kind"] == UAF]
    [module] = [m for m in record["modules"] if m["path"] == str(here)]
    assert module["build_id"] == built.build_id and module["load_address"] is not None

    # Without its debug information, a frame of the module is module+offset only.
    bare = kfence_cli("symbolize", str(records), cwd=short_dir, env=no_debuginfod())
    [doc] = [d for d in map(json.loads, bare.stdout.splitlines()) if d["kind"] == UAF]
    assert [source_line(f) for f in plugin_frames(doc["stack"], here)] == [None]

    debug_dir = short_dir / "debug"
    rest = debug_dir / ".build-id" / built.build_id[:2] / f"{built.build_id[2:]}.debug"
    rest.parent.mkdir(parents=True)
    shutil.copy(built.debug, rest)
    found = kfence_cli("symbolize", "--debug-file-directory", str(debug_dir), str(records),
                       cwd=short_dir, env=no_debuginfod())
    assert found.returncode == 0, found.stderr
    [doc] = [d for d in map(json.loads, found.stdout.splitlines()) if d["kind"] == UAF]
    use = line_of("plugin_uaf_use", PLUGIN)
    assert source_line(plugin_frames(doc["stack"], here)[0]) == ("plugin.c", use)
    assert source_line(plugin_frames(doc["allocated"]["stack"], here)[0]) == (
        "plugin.c", line_of("plugin_uaf_alloc", PLUGIN))
    assert f"plugin.c:{use}" in doc["text"]


# --- a real debuginfod server ------------------------------------------------------

PORT = 8002  # debuginfod's default, in a network namespace of its own


class Debuginfod:
    """Debian's debuginfod serving a directory, in a new network namespace where
    loopback is the only interface (debuginfod has no option to bind one address);
    commands reach it through nsenter."""

    def __init__(self, program: str, served: Path, db: Path, log: Path) -> None:
        self.log = log
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c",
             f'ip link set lo up && exec "$0" -F -p {PORT} -d "$1" -t 0 -g 0 "$2"',
             program, str(db), str(served)],
            stdout=self._log, stderr=subprocess.STDOUT)

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", *argv]

    def wait_for(self, wanted: str) -> None:
        """Until the server answers for build-id wanted (its first scan is done)."""
        probe = ("import sys, urllib.request\n"
                 "try:\n"
                 f"    urllib.request.urlopen('http://127.0.0.1:{PORT}/buildid/' + sys.argv[1]"
                 " + '/debuginfo', timeout=5)\n"
                 "except Exception as exc:\n"
                 "    sys.exit(str(exc))\n")
        deadline = time.monotonic() + CAP
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"debuginfod ended: {self.log.read_text()[-2000:]}")
            done = subprocess.run(self.command(sys.executable, "-c", probe, wanted),
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"debuginfod never served {wanted}: {done.stderr}\n"
                            f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=CAP)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def debuginfod(debian, short_dir):
    program = debian("debuginfod", "debuginfod")
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")):
        pytest.skip("a server on loopback only needs root, unshare, nsenter and ip")
    if subprocess.run(["unshare", "--net", "true"], check=False).returncode != 0:
        pytest.skip("no network namespace can be made here (unshare --net failed)")
    served = short_dir / "served"
    served.mkdir()
    started: list[Debuginfod] = []

    def start() -> Debuginfod:
        server = Debuginfod(program, served, short_dir / "debuginfod.sqlite",
                            short_dir / "debuginfod.log")
        started.append(server)
        return server

    yield served, start
    for server in started:
        server.stop()


@pytest.mark.slow
@needs_debian("debuginfod", "debuginfod")
def test_reports_of_an_exited_process_find_debug_information_through_debuginfod(
        programs, built, short_dir, debuginfod):
    served, start = debuginfod
    shutil.copy(built.stripped, served / "libplugin.so")
    shutil.copy(built.debug, served / "libplugin.debug")
    here = short_dir / "libplugin.so"
    shutil.copy(built.stripped, here)
    state_dir = short_dir / "state"
    run_to_exit(programs, built, here, state_dir)
    here.unlink()  # only its build-id is left, in the state

    cache = short_dir / "cache"
    reports = [sys.executable, "-m", "kfence_py", "reports", "--state-dir", str(state_dir),
               "--json"]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "DEBUGINFOD_URLS": ""}
    bare = json.loads(subprocess.run(reports, env=env, capture_output=True, text=True,
                                     check=True, timeout=CAP).stdout)
    [record] = bare["reports"]
    assert [source_line(f) for f in plugin_frames(record["stack"], here)] == [None]

    server = start()
    server.wait_for(built.build_id)
    env["DEBUGINFOD_URLS"] = f"http://127.0.0.1:{PORT}"
    done = subprocess.run(server.command(*reports), env=env, capture_output=True, text=True,
                          check=False, timeout=CAP)
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["reports"]
    assert source_line(plugin_frames(record["stack"], here)[0]) == (
        "plugin.c", line_of("plugin_uaf_use", PLUGIN))
    kept = cache / "kfence_py" / "debuginfod" / built.build_id / "debuginfo"
    assert build_id(kept) == built.build_id
    assert f"GET /buildid/{built.build_id}/debuginfo 200" in server.log.read_text()

    # The cache answers next time, with no server.
    server.stop()
    started_again = subprocess.run(reports, env=env, capture_output=True, text=True,
                                   check=True, timeout=CAP)
    [record] = json.loads(started_again.stdout)["reports"]
    assert source_line(plugin_frames(record["stack"], here)[0]) is not None
