"""The pytest plugin, run in a child pytest (with its faulthandler plugin on)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# What the parent's environment must not pass to a child pytest: the child's
# settings are each test's own.
_PARENT_ONLY = ("LD_PRELOAD", "KFENCE_OPTIONS", "PYTEST_KFENCE", "PYTEST_KFENCE_OPTIONS",
                "PYTEST_ADDOPTS")

BUGGY_TESTS = """
    import pytest
    import kfbugs

    @pytest.mark.kfence(sample_rate=1)
    def test_wrong_decref():
        kfbugs.use_after_decref()

    @pytest.mark.kfence(sample_rate=1)
    def test_overrun():
        kfbugs.overrun_pymem(32)

    @pytest.mark.kfence(sample_rate=1)
    def test_correct_code():
        assert sorted(str(i) for i in range(1000))[:2] == ["0", "1"]

    def test_not_marked():
        assert True
"""


@pytest.fixture
def child(pytester: pytest.Pytester, native_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(native_dir), os.environ.get("PYTHONPATH", "")])))
    for name in _PARENT_ONLY:
        monkeypatch.delenv(name, raising=False)
    return pytester


@pytest.mark.slow
def test_marked_tests_with_bugs_fail_with_the_report(child):
    child.makepyfile(test_buggy=BUGGY_TESTS)
    result = child.runpytest_subprocess(
        "-p", "faulthandler", "-v",
        "--kfence-options", "sample_rate=1:num_objects=4096:placement=right")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*test_wrong_decref FAILED*",
        "*test_overrun FAILED*",
        "*test_correct_code PASSED*",
        "*test_not_marked PASSED*",
    ])
    out = result.stdout.str()
    assert "kfence_py reported 1 memory bug(s) during call: use-after-free read" in out
    assert "kfence_py reported 1 memory bug(s) during call: out-of-bounds write" in out
    assert "Python traceback (most recent call first):" in out
    assert "in test_wrong_decref" in out


def test_kfence_flag_samples_every_test(child):
    child.makepyfile(test_flagged="""
        import kfbugs
        import kfence_py

        def test_bug():
            kfbugs.use_after_decref()

        def test_sampling_is_on():
            assert kfence_py.python_allocator_sampled()
    """)
    result = child.runpytest_subprocess("--kfence", "--kfence-options", "sample_rate=1")
    result.assert_outcomes(passed=1, failed=1)
    assert "use-after-free read" in result.stdout.str()


@pytest.mark.slow
def test_the_same_bug_fails_every_test_that_hits_it(child):
    """Printed once per process (dedup_reports), but counted: each test fails."""
    child.makepyfile(test_twice="""
        import pytest
        import kfbugs

        @pytest.mark.parametrize("run", [1, 2, 3])
        @pytest.mark.kfence(sample_rate=1)
        def test_overrun(run):
            kfbugs.overrun_pymem(32)
    """)
    result = child.runpytest_subprocess(
        "-p", "faulthandler", "--kfence-options",
        "sample_rate=1:num_objects=4096:placement=right")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    # Each test's own failure (pytest may repeat it in its short summary).
    assert out.count("kfence_py reported 1 memory bug(s) during call: out-of-bounds write") >= 3
    result.stdout.fnmatch_lines(["*= kfence_py =*", "* guarded allocation(s), 3 bug(s)*"])


# --- one child run, many tests: where a report goes, how it reads, the exit status --------

REPORTED_TESTS = """
    import pytest
    import kfbugs
    import kfcxx

    @pytest.fixture
    def bug_in_setup():
        kfbugs.use_after_decref()
        yield

    @pytest.fixture
    def bug_in_teardown():
        yield
        kfbugs.overrun_pymem(48)

    def test_uaf_then_own_assertion():
        kfbugs.use_after_decref()
        assert 6 * 7 == 43, "the test's own message"

    def test_overrun_otherwise_passing():
        kfbugs.overrun_pymem(32)

    def test_correct_code():
        assert sorted(str(i) for i in range(1000))[:2] == ["0", "1"]

    def test_setup_bug(bug_in_setup):
        pass

    def test_teardown_bug(bug_in_teardown):
        pass

    def test_cxx_overrun():
        kfcxx.overrun_pymem(32)
"""


@dataclass
class ChildRun:
    returncode: int
    stdout: str
    stderr: str

    def block(self, title: str) -> str:
        """The failure (or error) text pytest printed under "____ title ____"."""
        lines = self.stdout.splitlines()
        heads = [i for i, line in enumerate(lines) if re.fullmatch(rf"_+ {re.escape(title)} _+",
                                                                       line)]
        assert len(heads) == 1, f"no single block {title!r} in:\n{self.stdout}"
        body = []
        for line in lines[heads[0] + 1:]:
            if re.match(r"^(_{3,} .* _{3,}|={3,} .* ={3,})$", line):
                break
            body.append(line)
        return "\n".join(body)


def _child_env(native_dir: Path, extra: Mapping[str, str] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(native_dir),
                                                      env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _build_cxx(out: Path) -> None:
    """kfcxx.cpp without debug information: only the symbol table names its frames."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    cmd = ["g++", "-shared", "-fPIC", "-O0", "-g0", f"-I{sysconfig.get_paths()['include']}",
           str(TESTS / "kfcxx.cpp"), "-o", str(out / f"kfcxx{suffix}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.fail(f"cannot build kfcxx.cpp:\n{proc.stderr}")


@pytest.fixture(scope="module")
def reported(native_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ChildRun:
    """REPORTED_TESTS under ``pytest --kfence``, in a child pytest."""
    root = tmp_path_factory.mktemp("reported")
    _build_cxx(root)
    (root / "test_reported.py").write_text(textwrap.dedent(REPORTED_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--kfence",
         "--kfence-options", "sample_rate=1:num_objects=4096:placement=right"],
        cwd=root, env=_child_env(native_dir, {"PYTHONPATH": os.pathsep.join(
            [str(root), str(native_dir), os.environ.get("PYTHONPATH", "")])}),
        capture_output=True, text=True, timeout=300, check=False)
    return ChildRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_a_test_failing_its_own_assertion_keeps_its_failure_with_the_report_beside_it(reported):
    text = reported.block("test_uaf_then_own_assertion")
    own = text.index("AssertionError: the test's own message")
    section = text.index("- kfence_py report (call) -")
    assert own < section, "the test's failure first, then the kfence_py section"
    assert ("kfence_py reported 1 memory bug(s) during call: use-after-free read"
            in text[section:])


@pytest.mark.slow
def test_a_passing_test_that_caused_a_report_fails_with_the_report(reported):
    assert "test_reported.py::test_overrun_otherwise_passing FAILED" in reported.stdout
    assert "test_reported.py::test_correct_code PASSED" in reported.stdout
    text = reported.block("test_overrun_otherwise_passing")
    assert text.lstrip().startswith(
        "kfence_py reported 1 memory bug(s) during call: out-of-bounds write"), text
    assert "BUG: KFENCE: out-of-bounds write in " in text
    assert "- kfence_py report (" not in text, "the report is the failure, not a section"


@pytest.mark.slow
def test_a_bug_in_a_fixture_fails_its_setup_or_teardown(reported):
    setup = reported.block("ERROR at setup of test_setup_bug")
    assert "kfence_py reported 1 memory bug(s) during setup: use-after-free read" in setup
    assert "test_reported.py::test_setup_bug ERROR" in reported.stdout
    # The test itself passed; its teardown is an error, as pytest reports any teardown failure.
    teardown = reported.block("ERROR at teardown of test_teardown_bug")
    assert "kfence_py reported 1 memory bug(s) during teardown: out-of-bounds write" in teardown
    assert "test_reported.py::test_teardown_bug PASSED" in reported.stdout
    assert "test_reported.py::test_teardown_bug ERROR" in reported.stdout


@pytest.mark.slow
def test_the_report_is_symbolized_with_file_lines_and_interpreter_frames_folded(reported):
    text = reported.block("test_uaf_then_own_assertion")
    report = text[text.index("- kfence_py report (call) -"):]
    assert "BUG: KFENCE: use-after-free read in use_after_decref\n" in report
    # Access, allocation and free stacks each name kfbugs.c with a line.
    assert len(re.findall(r" in use_after_decref \S*kfbugs\.c:\d+", report)) >= 3, report
    assert re.search(r"^ \.\.\. \d+ interpreter frames \(#\d+\.\.#\d+\)$", report, re.M)
    frames = re.findall(r"^ #\d+ 0x", report, re.M)
    assert len(frames) < 12, f"{len(frames)} frames shown: the interpreter's are folded"
    assert "<unknown>" not in report


@pytest.mark.slow
def test_cxx_frames_are_demangled(reported):
    text = reported.block("test_cxx_overrun")
    report = text[:text.index("Captured stderr")] if "Captured stderr" in text else text
    assert "BUG: KFENCE: out-of-bounds write in kfcxx::Filler::overrun(char*) const" in report
    # No file:line (built without -g): the symbol and its offset, demangled.
    assert " in kfcxx::Filler::overrun(char*) const+0x" in report
    assert "_ZNK5kfcxx6Filler7overrunEPc" not in report
    # The library itself prints the symbol table's (mangled) name: the baseline.
    assert "_ZNK5kfcxx6Filler7overrunEPc" in text


@pytest.mark.slow
def test_a_run_with_reports_exits_as_pytest_does_for_failed_tests(reported):
    assert reported.returncode == pytest.ExitCode.TESTS_FAILED, reported.stdout[-3000:]
    assert re.search(r"3 failed, 2 passed, 2 errors", reported.stdout), reported.stdout[-500:]


# --- settings: command line > environment > ini file ---------------------------------

SAMPLED_PROBE = """
    import kfence_py

    def test_sampled():
        assert kfence_py.python_allocator_sampled()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("ini", "env", "args", "sampled"), [
    ("kfence = true", {}, [], True),
    ("kfence = true", {"PYTEST_KFENCE": "0"}, [], False),
    ("kfence = true", {"PYTEST_KFENCE": "off"}, ["--kfence"], True),
    ("", {"PYTEST_KFENCE": "1"}, [], True),
    ("", {"PYTEST_KFENCE": "yes"}, ["--no-kfence"], False),
    ("", {}, [], False),
], ids=["ini", "env-over-ini", "cli-over-env", "env", "no-flag-over-env", "nothing"])
def test_kfence_setting_from_command_line_environment_or_ini(child, monkeypatch, ini, env, args,
                                                             sampled):
    child.makeini(f"[pytest]\n{ini}\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child.makepyfile(test_probe=SAMPLED_PROBE)
    result = child.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1) if sampled else result.assert_outcomes(failed=1)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(("ini", "env", "args", "error"), [
    ("kfence_options = sample_rat=1", {}, [], "kfence_options in tox.ini: unknown"),
    pytest.param("kfence_options = sample_rat=1", {"PYTEST_KFENCE_OPTIONS": "sample_rate=1"},
                 [], None, marks=SLOW),
    pytest.param("", {"PYTEST_KFENCE_OPTIONS": "burst=x"}, [],
                 "PYTEST_KFENCE_OPTIONS: burst: expected", marks=SLOW),
    pytest.param("", {"PYTEST_KFENCE_OPTIONS": "burst=x"}, ["--kfence-options", "burst=2"],
                 None, marks=SLOW),
], ids=["ini", "env-over-ini", "env", "cli-over-env"])
def test_options_from_command_line_environment_or_ini(child, monkeypatch, ini, env, args, error):
    """The one in force is checked (before collection), the others not even read."""
    child.makeini(f"[pytest]\n{ini}\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child.makepyfile(test_x="def test_x(): pass")
    result = child.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", *args)
    output = result.stdout.str() + result.stderr.str()
    if error is None:
        assert result.ret == pytest.ExitCode.OK, output
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR and error in output, output


@pytest.mark.slow
def test_ini_options_are_applied_with_the_sanitizers_separators(child):
    child.makepyprojecttoml("""
        [tool.pytest.ini_options]
        kfence = true
        kfence_options = "sample_rate=1 num_objects=64,placement=left"
    """)
    child.makepyfile(test_pool="""
        import kfence_py
        from kfence_py._native import lib, text

        def test_pool():
            s = kfence_py.stats()
            assert (s.pool_size, s.control["sample_rate"]) == (64, 1)
            assert text(lib.kfence_option_value(b"placement")) == "left"
    """)
    result = child.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# --- usage errors: pytest's exit status 4, before any test runs -----------------------

RUNS_NOTHING = """
    import pytest

    @pytest.mark.kfence(sample_rate=1)
    def test_marked():
        open("ran", "w").close()

    def test_other():
        open("ran", "w").close()
"""


@pytest.mark.parametrize(("args", "env", "marker", "error"), [
    (["--kfence", "--kfence-options", "sample_rat=1"], {}, "sample_rate=1",
     "--kfence-options: unknown kfence_py option 'sample_rat'; did you mean 'sample_rate'?"),
    pytest.param(["--kfence-options", "num_objects=0"], {}, "sample_rate=1",
                 "--kfence-options: num_objects: expected an integer in 1..65536, not '0'",
                 marks=SLOW),
    pytest.param(["--kfence", "--kfence-options", "sample_rate"], {}, "sample_rate=1",
                 "--kfence-options: 'sample_rate' is not key=value", marks=SLOW),
    ([], {}, "sample_rat=1",
     "test_usage.py::test_marked: @pytest.mark.kfence: unknown kfence_py option 'sample_rat'"),
    pytest.param([], {}, "placement='middle'",
                 "@pytest.mark.kfence: placement: expected random, left or right, not 'middle'",
                 marks=SLOW),
    pytest.param([], {"PYTEST_KFENCE": "maybe"}, "sample_rate=1",
                 "PYTEST_KFENCE='maybe': expected 1 or 0", marks=SLOW),
    (["--kfence"], {"KFENCE_OPTIONS": "enabled=0"}, "sample_rate=1",
     "kfence_py could not start in this process"),
], ids=["unknown-option", "out-of-range", "no-value", "marker-typo", "marker-value",
        "env-flag", "library-disabled"])
def test_usage_errors_stop_the_run_with_status_4(child, monkeypatch, args, env, marker, error):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child.makepyfile(test_usage=RUNS_NOTHING.replace("sample_rate=1", marker))
    result = child.runpytest_subprocess("-p", "no:cacheprovider", *args)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert f"ERROR: {error}" in output or error in output, output
    assert "INTERNALERROR" not in output
    assert not (child.path / "ran").exists(), "no test ran"


# --- pytest-xdist ----------------------------------------------------------------------


@pytest.mark.slow
def test_works_in_xdist_workers(child):
    child.makepyfile(test_split="""
        import kfbugs

        def test_bug():
            kfbugs.use_after_decref()

        def test_good():
            assert sorted(str(i) for i in range(1000))[:2] == ["0", "1"]
    """)
    result = child.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-v", "--kfence")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert re.search(r"PASSED test_split.py::test_good", out), out
    assert re.search(r"FAILED test_split.py::test_bug", out), out
    assert "kfence_py reported 1 memory bug(s) during call: use-after-free read" in out
    assert re.search(r" in use_after_decref \S*kfbugs\.c:\d+", out), out


@pytest.mark.slow
def test_a_usage_error_in_an_xdist_worker_stops_the_run_with_status_4(child):
    child.makepyfile(test_typo="""
        import pytest

        @pytest.mark.kfence(sample_rat=1)
        def test_marked():
            pass
    """)
    result = child.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert "unknown kfence_py option 'sample_rat'; did you mean 'sample_rate'?" in output
    assert "INTERNALERROR" not in output


# --- folding the interpreter's frames (render.py) --------------------------------------


def test_runs_of_interpreter_frames_fold_and_the_start_up_tail_goes_with_them():
    from kfence_py.render import fold_interpreter

    py, lib, ext, libc = "/usr/bin/python3.11", "/lib/libpython3.11.so", "/x/ext.so", \
        "/lib/x86_64-linux-gnu/libc.so.6"
    interpreter = frozenset({py, lib})
    # One interpreter frame between two of an extension stays a frame.
    assert fold_interpreter([ext, lib, ext], interpreter) == []
    # Two or more fold; the C library's frames at the top of the stack stay.
    assert fold_interpreter([libc, ext, lib, lib, lib, ext], interpreter) == [(2, 5)]
    # The process's start-up (libc's __libc_start_main, the executable's _start) folds in.
    assert fold_interpreter([ext, lib, lib, libc, libc, py], interpreter) == [(1, 6)]
    # A C library frame followed by more than the interpreter ends the run.
    assert fold_interpreter([lib, lib, libc, ext, lib, lib], interpreter) == [(0, 2), (4, 6)]
    assert fold_interpreter([ext, None, libc], interpreter) == []
