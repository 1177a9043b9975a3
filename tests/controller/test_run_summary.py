"""What a run checked and what it did not: the summary at the end of kfence-py run,
and the library's warnings kept out of the program's own stderr."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ctl import kfence_cli

import kfence_py

# Three processes that exec each other: sh, and two children.
THREE = "sh -c true; sh -c true"


def test_warnings_under_run_go_to_the_summary_not_the_programs_stderr(short_dir):
    """A test suite compares its children's stderr: a kfence warning there breaks it."""
    err = short_dir / "program-stderr"
    run = kfence_cli("run", "--num-objects", "65536", "--", "/bin/sh", "-c",
                     f"exec 2>{err}; {THREE}", cwd=short_dir)
    assert run.returncode == 0, run.stderr
    assert err.read_text() == "", "the library wrote into the program's stderr"
    (capped,) = [line for line in run.stderr.splitlines() if "num_objects capped" in line]
    assert capped.startswith("kfence-py: kfence: num_objects capped to ")
    assert capped.endswith("by vm.max_map_count"), "once, for the three processes"


def test_summary_says_what_was_guarded_and_when_the_pool_was_the_limit(short_dir):
    run = kfence_cli("run", "--sample-rate", "1", "--num-objects", "4",
                     "--skip-covered-thresh", "100", "--", "/bin/sh", "-c", THREE,
                     cwd=short_dir)
    assert run.returncode == 0, run.stderr
    ours = [line for line in run.stderr.splitlines() if line.startswith("kfence-py: ")]
    first = ours[0]
    assert first.startswith("kfence-py: 3 process(es), ") and first.endswith(", 0 bug(s)")
    assert any(line.startswith("kfence-py: skipped allocations: ") and "capacity" in line
               for line in ours), ours
    assert any("hint: the pool (4 slots) was full" in line for line in ours), ours


def test_outside_run_a_startup_warning_is_said_once_per_process_tree(tmp_path):
    env = {**os.environ, "LD_PRELOAD": str(kfence_py.lib_path()),
           "KFENCE_OPTIONS": "num_objects=65536"}
    env.pop("KFENCE_WARNED", None)
    run = subprocess.run(["/bin/sh", "-c", THREE], env=env, capture_output=True, text=True,
                         cwd=tmp_path, check=False, timeout=60)
    assert run.returncode == 0
    assert run.stderr.count("num_objects capped") == 1, run.stderr


def test_a_warning_of_a_program_that_runs_alone_is_said(tmp_path):
    env = {**os.environ, "LD_PRELOAD": str(kfence_py.lib_path()),
           "KFENCE_OPTIONS": "num_objects=65536:bogus=1"}
    env.pop("KFENCE_WARNED", None)
    run = subprocess.run(["/bin/true"], env=env, capture_output=True, text=True,
                         cwd=Path(tmp_path), check=False, timeout=60)
    assert "num_objects capped" in run.stderr and "unknown option 'bogus'" in run.stderr


def _pool_size(short_dir, state_dir) -> int:
    out = kfence_cli("stats", "--state-dir", str(state_dir), "--json", cwd=short_dir).stdout
    (proc,) = json.loads(out)["processes"]
    return proc["stats"]["pool_size"]


def test_the_test_suite_mode_gets_a_pool_to_match(short_dir, monkeypatch):
    """--sample-rate without a pool size: 4096 slots, as the pytest plugin's; a size chosen
    by flag or in KFENCE_OPTIONS is kept, and the production mode keeps the default."""
    monkeypatch.delenv("KFENCE_OPTIONS", raising=False)
    cases = [(["--sample-rate", "1"], None, 4096),
             (["--sample-rate", "1", "--num-objects", "64"], None, 64),
             (["--sample-rate", "1"], "num_objects=32", 32),
             ([], None, 255)]
    for i, (flags, env_options, size) in enumerate(cases):
        if env_options:
            monkeypatch.setenv("KFENCE_OPTIONS", env_options)
        state_dir = short_dir / f"pool{i}"
        run = kfence_cli("run", "--state-dir", str(state_dir), *flags, "--", "/bin/true",
                         cwd=short_dir)
        assert run.returncode == 0, run.stderr
        assert _pool_size(short_dir, state_dir) == size, (flags, env_options)
        monkeypatch.delenv("KFENCE_OPTIONS", raising=False)


def test_a_forged_gate_file_is_ignored(short_dir):
    """<pid>.gate is read by stats from a directory others may have written to:
    a FIFO (which would block), a symbolic link or garbage is no decision."""
    from kfence_py.governor import last_decision
    state = short_dir / "123.state"
    gate = state.with_suffix(".gate")
    os.mkfifo(gate)
    assert last_decision(state) is None
    gate.unlink()
    (short_dir / "elsewhere").write_text('{"time": 1, "setting": "sample_rate", "old": 1, '
                                         '"new": 2, "why": "x"}')
    gate.symlink_to(short_dir / "elsewhere")
    assert last_decision(state) is None
    gate.unlink()
    gate.write_text("not json")
    assert last_decision(state) is None
    gate.write_text((short_dir / "elsewhere").read_text())
    assert last_decision(state).new == 2
