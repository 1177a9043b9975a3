"""kfence-py's command line: hints for misspelled flags, ranges, -v anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kfence_py
from kfence_py.cli import COMMANDS, build_parser, close_flags, main
from kfence_py.exitcodes import ExitCode
from kfence_py.options import option_specs
from kfence_py.protocol import MAX_CLIENTS_LIMIT

PACKAGE_ROOT = Path(kfence_py.__file__).resolve().parents[1]


def usage_error(capsys, *argv: str) -> str:
    """main(argv) must stop with argparse's usage status; its message."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == ExitCode.USAGE
    return capsys.readouterr().err


def test_an_underscore_for_a_dash_is_hinted(capsys):
    err = usage_error(capsys, "run", "--sample_rate", "1", "--", "true")
    assert "unrecognized arguments: --sample_rate" in err
    assert "--sample_rate: did you mean --sample-rate?" in err
    assert err.startswith("usage: kfence-py run"), "the usage of the command that was run"


def test_a_flag_with_its_value_is_hinted_by_its_name(capsys):
    err = usage_error(capsys, "run", "--num_objects=8", "--", "true")
    assert "--num_objects: did you mean --num-objects?" in err


def test_a_misspelled_flag_of_the_main_parser_is_hinted_there(capsys):
    err = usage_error(capsys, "--verbse", "lib-path")
    assert "--verbse: did you mean --verbose?" in err
    assert err.startswith("usage: kfence-py [-h]")


def test_nothing_close_gets_no_hint(capsys):
    err = usage_error(capsys, "stats", "--zzzzzz")
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err


def _long_flags(name: str) -> list[str]:
    parser, _ = build_parser()
    return [s for s in parser.commands[name].option_strings()
            if s.startswith("--") and s not in ("--help", "--verbose")]


@pytest.mark.parametrize("name", [cls.name for cls in COMMANDS])
def test_every_command_hints_its_own_flags(capsys, name):
    """A flag with a letter dropped, in every command that has one: hinted by its command."""
    flags = _long_flags(name)
    if not flags:
        flags = ["--verbose"]  # lib-path, demo: only -v/--verbose
    flag = max(flags, key=len)
    typo = flag[:4] + flag[5:]
    # Required arguments given, so the unknown flag is the only error.
    required = {"run": ["--", "true"], "serve": ["--state-dir", "/", "--socket", "/x"]}
    args = [name, typo, *required.get(name, [])]
    err = usage_error(capsys, *args)
    assert f"{typo}: did you mean {flag}?" in err
    assert err.startswith(f"usage: kfence-py {name}")


def test_close_flags():
    known = ["--sample-rate", "--sample-interval", "--json", "-v", "--verbose"]
    assert close_flags("--sample_rate", known) == ["--sample-rate"]
    assert close_flags("--sampel-rate", known) == ["--sample-rate"]
    assert close_flags("--jsno", known) == ["--json"]
    assert close_flags("--zzz", known) == []
    assert close_flags("positional", known) == []


def test_the_hint_in_a_real_process():
    """python -m kfence_py, as a user runs it (the package under test on the path)."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "kfence_py", "run", "--sample_rate", "1", "--",
                           "true"], capture_output=True, text=True, env=env, cwd="/",
                          timeout=60, check=False)
    assert proc.returncode == ExitCode.USAGE
    assert "did you mean --sample-rate?" in proc.stderr


# --- ranges -------------------------------------------------------------------


def test_an_option_flag_out_of_range_names_the_range(capsys):
    err = usage_error(capsys, "run", "--sample-rate", "-1", "--", "true")
    assert "argument --sample-rate: sample_rate: expected an integer in 0..1000000000, " \
           "not '-1'" in err


@pytest.mark.parametrize(("flag", "option", "bad"), [
    ("--max-sample-rate", "sample_rate", "-1"),
    ("--max-sample-rate", "sample_rate", "x"),
    ("--max-sample-interval", "sample_interval", "99999999"),
])
def test_a_governor_bound_takes_the_range_of_its_option(capsys, flag, option, bad):
    spec = option_specs()[option]
    err = usage_error(capsys, "run", flag, bad, "--", "true")
    unit = " ms" if spec.type == "MS" else ""
    assert f"expected an integer in {spec.minimum}..{spec.maximum}{unit}, not '{bad}'" in err


def test_governor_bounds_in_range_are_taken():
    parser, _ = build_parser()
    args = parser.parse(["run", "--max-sample-rate", "1000000000", "--max-sample-interval",
                         "0", "--", "true"])
    assert (args.max_sample_rate, args.max_sample_interval) == (1000000000, 0)


def test_pid_and_max_clients_name_their_ranges(capsys):
    err = usage_error(capsys, "stats", "--pid", "0")
    assert "argument --pid: expected a process id in 1.." in err
    err = usage_error(capsys, "serve", "--state-dir", "/", "--socket", "/x", "--max-clients",
                      "0")
    assert f"expected an integer in 1..{MAX_CLIENTS_LIMIT}, not '0'" in err
    err = usage_error(capsys, "serve", "--state-dir", "/", "--socket", "/x", "--keep-clean",
                      "-1")
    assert "expected a count (0 or more), not '-1'" in err


# --- -v before or after the command -------------------------------------------


@pytest.mark.parametrize(("argv", "verbose"), [
    (["stats"], False),
    (["-v", "stats"], True),
    (["stats", "-v"], True),
    (["stats", "--verbose"], True),
    (["--verbose", "stats", "-v"], True),
    (["run", "-v", "--", "true", "-x"], True),
    (["run", "--", "true", "-v"], False),  # the command's own -v
])
def test_verbose_before_or_after_the_command(argv, verbose):
    parser, _ = build_parser()
    args = parser.parse(argv)
    assert args.verbose is verbose
    if argv[0] == "run":
        assert args.argv[-1] in ("-x", "-v")


def test_verbose_after_the_command_runs_it(capsys):
    assert main(["lib-path", "-v"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == str(kfence_py.lib_path())
