"""KFENCE_OPTIONS in the sanitizers' grammar, and help=1, under the preload."""

from __future__ import annotations

import pytest

from kfence_py.options import option_specs, runtime_options

INTRO = "kfence: KFENCE_OPTIONS is name=value items"


@pytest.fixture(scope="module")
def options_prog(programs):
    return programs.build("options.c")


def test_every_separator_of_the_sanitizers_separates(programs, options_prog, tmp_path):
    report_dir = tmp_path / "my reports, all"
    report_dir.mkdir()
    text = (f" sample_rate=1,burst=3:num_objects=7\tstack_depth=9\nexitcode=3\r"
            f"\t ,:leak_check=yes,,  report_path='{report_dir}/r' \n")
    run = programs.run(options_prog, "sample_rate", "burst", "num_objects", "stack_depth",
                       "exitcode", "leak_check", "report_path", options=text)
    assert run.returncode == 0 and "ran on" in run.stdout
    assert not list(report_dir.iterdir()), "no warning, no report"
    assert run.stderr == ""
    assert run.stdout.splitlines()[:7] == [
        "sample_rate=1", "burst=3", "num_objects=7", "stack_depth=9", "exitcode=3",
        "leak_check=1", f"report_path={report_dir}/r"]
    assert run.counters()["allocs"] > 0, "sampling every allocation"


def test_colons_alone_still_separate(programs, options_prog):
    run = programs.run(options_prog, "sample_rate", "num_objects",
                       options="sample_rate=1:num_objects=9")
    assert run.stdout.splitlines()[:2] == ["sample_rate=1", "num_objects=9"]
    assert run.stderr == ""


def test_bad_items_name_the_values_expected(programs, options_prog):
    run = programs.run(options_prog, "stack_depth", "sample_interval",
                       options="stack_depth=65 sample_interval=-5, state_dir='/tmp/x")
    assert run.returncode == 0 and "ran on" in run.stdout
    assert run.warnings == [
        "kfence: bad value in KFENCE_OPTIONS 'stack_depth=65': expected an integer in 1..64; "
        "keeping stack_depth=64",
        "kfence: bad value in KFENCE_OPTIONS 'sample_interval=-5': expected an integer in "
        "0..3600000 ms; keeping sample_interval=10",
        "kfence: 'state_dir='/tmp/x' in KFENCE_OPTIONS has no closing quote; ignored"]
    assert run.stdout.splitlines()[:2] == ["stack_depth=64", "sample_interval=10"]


def _table(stderr: str) -> dict[str, tuple[str, str]]:
    """help=1's table: option name to (its line, the description line under it)."""
    lines = stderr.splitlines()
    return {line.split()[0].partition("=")[0]: (line, lines[i + 1].strip())
            for i, line in enumerate(lines) if line.startswith("  ") and
            not line.startswith("      ")}


def test_help_1_prints_the_option_table_and_the_program_runs_on(programs, options_prog):
    run = programs.run(options_prog, "sample_rate", options="help=1 sample_rate=1")
    assert run.returncode == 0 and run.stdout.startswith("sample_rate=1\n")
    assert "ran on" in run.stdout and run.counters()["allocs"] > 0
    assert run.stderr.startswith(INTRO)
    table = _table(run.stderr)
    specs = option_specs()
    assert list(table) == list(specs), "every option of options.inc, in its order"
    for name, spec in specs.items():
        line, description = table[name]
        assert description == spec.description
        default = spec.default or "empty"
        assert f" (default {default}; " in line
        assert line.endswith("; at run time)" if name in runtime_options() else "; at start)")
    assert table["sample_rate"][0] == (
        "  sample_rate=1 (default 0; an integer in 0..1000000000; at run time)"), "in force"
    assert table["align"][0].startswith("  align=16 (default 16; a power of two in 1..4096;")
    assert "random, left or right" in table["placement"][0]


def test_no_table_without_help(programs, options_prog):
    run = programs.run(options_prog, options="sample_rate=1 help=0")
    assert run.returncode == 0 and run.stderr == ""


def test_help_1_prints_once_per_process_tree(programs, options_prog):
    run = programs.run("/bin/sh", "-c", f"{options_prog}; {options_prog}", options="help=1")
    assert run.returncode == 0 and run.stdout.count("ran on") == 2
    assert run.stderr.count(INTRO) == 1, run.stderr


def test_help_1_with_enabled_0_prints_and_runs_without_detection(programs, options_prog):
    run = programs.run(options_prog, options="help=1,enabled=0")
    assert run.stderr.startswith(INTRO) and "  enabled=0 (default 1;" in run.stderr
    assert run.returncode == 0 and "counters: none" in run.stdout
