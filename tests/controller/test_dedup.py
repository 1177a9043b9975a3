"""One report per bug, not per occurrence: a bug in a loop is printed once per
process, its repeats counted and shown with it, under a signature (bucket)
that is the same in every process running the same binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ctl import kfence_cli

LOOP_BUG = Path(__file__).resolve().parents[1] / "integration" / "progs" / "loop_bug.c"


@pytest.fixture(scope="module")
def loop_bug(programs):
    return programs.build(LOOP_BUG)


def _run(short_dir, state_dir, exe, *options: str):
    return kfence_cli("run", "--state-dir", str(state_dir), "--sample-rate", "1",
                      "--placement", "right", *options, "--", str(exe), cwd=short_dir)


def test_a_bug_in_a_loop_is_printed_once_and_its_repeats_counted(short_dir, loop_bug):
    state_dir = short_dir / "state"
    runs = [_run(short_dir, state_dir, loop_bug) for _ in range(2)]
    for run in runs:
        assert run.returncode == 66, run.stderr
        assert run.stderr.count("BUG: KFENCE: out-of-bounds write in handle_request") == 1
        assert run.stderr.count("BUG: KFENCE: use-after-free read in other_bug") == 1
    shown = kfence_cli("reports", "--state-dir", str(state_dir), "--json", cwd=short_dir)
    reports = json.loads(shown.stdout)["reports"]
    by_kind: dict[str, list[dict]] = {}
    for r in reports:
        by_kind.setdefault(r["kind"], []).append(r)
    oob, uaf = by_kind["out-of-bounds"], by_kind["use-after-free"]
    assert [r["repeats"] for r in oob] == [99, 99] and [r["repeats"] for r in uaf] == [0, 0]
    assert len({r["pid"] for r in oob}) == 2
    assert len({r["bucket"] for r in oob}) == 1, "the same bug in two processes, one bucket"
    assert oob[0]["bucket"] != uaf[0]["bucket"]
    text = kfence_cli("reports", "--state-dir", str(state_dir), cwd=short_dir).stdout
    assert text.count("repeated 99 more time(s), not printed") == 2
    stats = json.loads(kfence_cli("stats", "--state-dir", str(state_dir), "--json",
                                  cwd=short_dir).stdout)["processes"][0]["stats"]
    assert stats["total_bugs"] == 101 and stats["repeated_bugs"] == 99, stats


def test_dedup_reports_0_prints_every_report(short_dir, loop_bug):
    run = _run(short_dir, short_dir / "state0", loop_bug, "--dedup-reports", "0")
    assert run.returncode == 66
    assert run.stderr.count("BUG: KFENCE: out-of-bounds write in handle_request") == 100


def test_reports_group_counts_each_bug_over_processes_and_files(short_dir, loop_bug):
    state_dir, jsonl = short_dir / "grouped", short_dir / "reports.jsonl"
    for _ in range(2):
        run = _run(short_dir, state_dir, loop_bug, "--json-reports", str(jsonl))
        assert run.returncode == 66, run.stderr
    groups = json.loads(kfence_cli("reports", "--group", "--json", "--state-dir",
                                   str(state_dir), cwd=short_dir).stdout)["groups"]
    assert [(g["kind"], g["function"], g["count"], g["processes"]) for g in groups] == [
        ("out-of-bounds", "handle_request", 200, 2), ("use-after-free", "other_bug", 2, 2)]
    from_files = json.loads(kfence_cli("reports", "--group", "--json", str(jsonl),
                                       cwd=short_dir).stdout)["groups"]
    assert {g["bucket"] for g in from_files} == {g["bucket"] for g in groups}
    text = kfence_cli("reports", "--group", "--state-dir", str(state_dir), cwd=short_dir)
    assert text.stdout.startswith("2 distinct bug(s)\n")
    bad = short_dir / "bad.jsonl"
    bad.write_text("{not json\n")
    refused = kfence_cli("reports", "--group", str(bad), cwd=short_dir)
    assert refused.returncode == 2 and "bad.jsonl:1: not a JSON record" in refused.stderr
