"""bench/field.py's parts that need no download: the package list, JUnit XML
(pytest's and regrtest's), the comparison with the plain run, and the tables."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import field  # noqa: E402
import sdist  # noqa: E402

PYTEST_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="pkg.tests.test_a.TestX" name="test_ok" file="pkg/tests/test_a.py" line="3"/>
<testcase classname="pkg.tests.test_a.TestX" name="test_bad[1-2]" file="pkg/tests/test_a.py">
  <failure message="assert 1 == 2">trace</failure></testcase>
<testcase classname="pkg.tests.test_a" name="test_skip" file="pkg/tests/test_a.py">
  <skipped type="pytest.skip" message="no">why</skipped></testcase>
<testcase classname="pkg.tests.test_b" name="test_teardown" file="pkg/tests/test_b.py"/>
<testcase classname="pkg.tests.test_b" name="test_teardown" file="pkg/tests/test_b.py">
  <error message="failed on teardown">boom</error></testcase>
<testcase classname="pkg.tests.test_b" name="test_kf" file="pkg/tests/test_b.py">
  <failure message="kfence_py reported 1 memory bug(s) during call: use-after-free read">
  BUG: KFENCE: use-after-free read in f</failure></testcase>
</testsuite></testsuites>
"""

REGRTEST_JUNIT = """<testsuites tests="3" errors="0" failures="1">
<testsuite start="x" tests="2" errors="0" failures="1">
<testcase name="test.test_list.ListTest.test_basic" status="run" result="completed"/>
<testcase name="test.test_list.ListTest.test_bad" status="run" result="completed">
  <failure type="AssertionError" message="x">tb</failure></testcase>
</testsuite>
<testsuite start="y" tests="1"><testcase name="test.test_dict.DictTest.test_skip"
  status="run" result="completed"><skipped>no</skipped></testcase></testsuite>
</testsuites>
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(text)
    return path


def test_pytest_junit_gives_each_test_its_worst_outcome(tmp_path):
    outcomes = field.junit_outcomes(write(tmp_path, PYTEST_JUNIT))
    assert outcomes == {
        "pkg.tests.test_a.TestX::test_ok": "passed",
        "pkg.tests.test_a.TestX::test_bad[1-2]": "failed",
        "pkg.tests.test_a::test_skip": "skipped",
        "pkg.tests.test_b::test_teardown": "error",  # passed, then its teardown failed
        "pkg.tests.test_b::test_kf": "failed",
    }
    assert field.count_outcomes(outcomes) == {"passed": 1, "failed": 2, "skipped": 1,
                                              "error": 1}


def test_regrtest_junit_ids_are_unittest_ids(tmp_path):
    outcomes = field.junit_outcomes(write(tmp_path, REGRTEST_JUNIT))
    assert outcomes == {"test.test_list.ListTest.test_basic": "passed",
                        "test.test_list.ListTest.test_bad": "failed",
                        "test.test_dict.DictTest.test_skip": "skipped"}


def test_node_ids_for_a_rerun_come_from_xunit1_files(tmp_path):
    nodes = field.junit_node_ids(write(tmp_path, PYTEST_JUNIT))
    assert nodes["pkg.tests.test_a.TestX::test_bad[1-2]"] == \
        "pkg/tests/test_a.py::TestX::test_bad[1-2]"
    assert nodes["pkg.tests.test_a::test_skip"] == "pkg/tests/test_a.py::test_skip"


def test_the_plugins_report_is_found_in_its_failure_text(tmp_path):
    texts = field.junit_failure_texts(write(tmp_path, PYTEST_JUNIT))
    assert list(texts) == ["pkg.tests.test_b::test_kf"]
    assert "use-after-free read in f" in texts["pkg.tests.test_b::test_kf"]


def test_differences_name_each_test_whose_outcome_changed():
    plain = {"a": "passed", "b": "failed", "c": "skipped", "d": "passed"}
    other = {"a": "passed", "b": "passed", "c": "skipped", "e": "passed"}
    assert field.differences(plain, other) == {"b": ("failed", "passed"),
                                               "d": ("passed", "absent"),
                                               "e": ("absent", "passed")}
    assert field.differences(plain, dict(plain)) == {}


@pytest.mark.parametrize(("first", "rerun", "verdict"), [
    (("passed", "failed"), ("passed", "failed"), "persistent"),
    (("passed", "failed"), ("passed", "passed"), "flaky"),    # the mode passes the second time
    (("passed", "failed"), ("failed", "passed"), "flaky"),    # plain fails the second time
    (("passed", "failed"), ("failed", "failed"), "flaky"),
    (("passed", "failed"), (None, "failed"), "unknown"),
])
def test_a_rerun_tells_a_flaky_test_from_a_persistent_difference(first, rerun, verdict):
    assert field.classify(first, rerun) == verdict


def test_records_are_grouped_by_bucket_with_their_repeats():
    records = [
        {"bucket": "b1", "kind": "use-after-free", "access": "read", "function": "f",
         "pid": 1, "repeats": 2},
        {"bucket": "b1", "kind": "use-after-free", "access": "read", "function": "f",
         "pid": 2},
        {"bucket": "b2", "kind": "invalid free", "access": None, "function": "g", "pid": 1},
    ]
    groups = field.group_records(records)
    assert [(g["bucket"], g["count"], g["processes"]) for g in groups] == [
        ("b1", 4, 2), ("b2", 1, 1)]


def test_the_package_list_is_checked(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[package]]\nname = "x"\nversion = "1"\nkind = "parser"\n'
                    'tests = ["t"]\nquick = true\n[[package]]\nname = "y"\nversion = "2"\n'
                    'kind = "text"\ntests = []\n')
    packages = field.load_packages(path)
    assert [p.key for p in packages] == ["x-1", "y-2"]
    assert [p.name for p in field.select(packages, None, quick=True)] == ["x"]
    assert [p.name for p in field.select(packages, ["y"], quick=True)] == ["y"]
    path.write_text('[[package]]\nname = "x"\nversion = "1"\nkind = "p"\ntests = []\n'
                    'colour = "red"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        field.load_packages(path)


def test_the_shipped_package_list_loads():
    packages = field.load_packages()
    assert len(packages) >= 6
    assert any(p.quick for p in packages)


def test_sdists_are_found_whatever_the_spelling(tmp_path):
    (tmp_path / "PyYAML-6.0.1.tar.gz").write_text("")
    (tmp_path / "markupsafe-3.0.4.tar.gz").write_text("")
    assert sdist.find_sdist(tmp_path, "pyyaml", "6.0.1").name == "PyYAML-6.0.1.tar.gz"
    assert sdist.find_sdist(tmp_path, "MarkupSafe", "3.0.4").name == "markupsafe-3.0.4.tar.gz"
    assert sdist.find_sdist(tmp_path, "pyyaml", "6.0.2") is None


def test_debug_flags_go_after_the_interpreters_and_the_packages_own():
    # setuptools >= 80 uses CFLAGS instead of the interpreter's flags (its -O level):
    # they are written out first, so the build keeps -O and -DNDEBUG with any setuptools.
    own = sysconfig.get_config_var("CFLAGS")
    env = sdist.debug_env("-g", {"CFLAGS": "-DX", "PATH": "/bin"})
    assert env["CFLAGS"] == f"{own} -DX -g" and env["CXXFLAGS"] == f"{own} -g"
    assert "-O" in env["CFLAGS"].replace("-g", "") and env["PATH"] == "/bin"


def doc_with(groups: list[dict], ratio: float = 2.0) -> dict:
    mode = {"mode": "run", "status": 66, "seconds": 4.0, "ratio": ratio,
            "counts": {"passed": 3, "failed": 0, "skipped": 1, "error": 0}, "tests_run": 4,
            "differences": [], "processes": 2, "guarded": 100, "bugs": len(groups),
            "skipped": {}, "sites": 7, "reports": [], "groups": groups,
            "failure_texts": {}, "summary": [], "error": None}
    plain = {**mode, "mode": "plain", "ratio": None, "guarded": 0, "groups": []}
    return {"machine": {"python": "3.11.7"}, "packages": [
        {"name": "pkg", "version": "1", "kind": "parser", "build_seconds": 1.0,
         "build_error": None, "modes": {"plain": plain, "run": mode}},
        {"name": "broken", "version": "2", "kind": "text", "build_seconds": 0.0,
         "build_error": "gcc failed", "modes": {}}]}


def test_the_table_shows_each_mode_and_report_with_its_verdict():
    groups = [{"bucket": "aaaa", "kind": "use-after-free", "access": "read",
               "function": "f", "count": 3, "processes": 1},
              {"bucket": "bbbb", "kind": "invalid free", "access": None,
               "function": "g", "count": 1, "processes": 1}]
    triage = {"aaaa": {"verdict": "true", "note": "a real one"}}
    text = field.render_table(doc_with(groups), triage)
    assert "| pkg 1 | parser | run | 3/0/1/0 | 0 | 4.0 | 2.00x | 2 | 100 | 0 | 7 | 2 |" in text
    assert "| broken 2 | text | build failed |" in text
    assert "| pkg | run | use-after-free read | f | `aaaa` | 3 | true | a real one |" in text
    assert "| pkg | run | invalid free | g | `bbbb` | 1 | untriaged |  |" in text


def test_the_summary_counts_unique_reports_and_the_median_cost():
    groups = [{"bucket": "aaaa", "kind": "use-after-free", "access": "read",
               "function": "f", "count": 3, "processes": 1}]
    summary = field.render_summary(doc_with(groups, ratio=1.5), {})
    assert "| `kfence-py run --sample-rate 1` | 1 | 4 | 100 | 1 | 0 / 0 (1 untriaged) " \
           "| 0 | 1.50x |" in summary
    summary = field.render_summary(doc_with(groups), {"aaaa": {"verdict": "false",
                                                               "note": ""}})
    assert "| 1 | 0 / 1 | 0 | 2.00x |" in summary


def test_an_only_run_replaces_its_packages_and_keeps_the_others():
    doc = {"machine": {}, "packages": [{"name": "a", "v": 1}, {"name": "b", "v": 1}]}
    new = field.PackageResult("b", "2", "text")
    merged = field.merge_results(doc, [new])
    assert [(p["name"], p.get("version")) for p in merged["packages"]] == [
        ("a", None), ("b", "2")]


def test_triage_verdicts_are_true_or_false(tmp_path):
    path = tmp_path / "triage.toml"
    path.write_text('[bucket.abcd]\nverdict = "true"\nnote = "x"\n')
    assert field.load_triage(path) == {"abcd": {"verdict": "true", "note": "x"}}
    path.write_text('[bucket.abcd]\nverdict = "maybe"\n')
    with pytest.raises(ValueError, match="verdict"):
        field.load_triage(path)


def test_the_summary_goes_between_readmes_markers():
    readme = f"intro\n{field.SUMMARY_BEGIN}\nold table\n{field.SUMMARY_END}\nrest\n"
    assert field.with_summary(readme, "| new |") == \
        f"intro\n{field.SUMMARY_BEGIN}\n| new |\n{field.SUMMARY_END}\nrest\n"


def trial(tmp_path: Path, **kw) -> field.Trial:
    pkg = field.Package(name=kw.pop("name", "pkg"), version="1", kind="parser",
                        tests=["tests"], skip=["tests/test_a.py::test_net"], **kw)
    return field.Trial(pkg, tmp_path, timeout=10)


def test_each_mode_runs_pytest_with_junit_and_the_readmes_options(tmp_path):
    t = trial(tmp_path)
    plain = t.command("plain", tmp_path)
    assert plain[1:3] == ["-m", "pytest"]
    assert f"--junitxml={tmp_path / 'junit.xml'}" in plain
    assert plain[-2:] == ["tests", "--deselect=tests/test_a.py::test_net"]
    run = t.command("run", tmp_path)
    assert run[1:6] == ["-m", "kfence_py", "run", "--sample-rate", "1"]
    assert run[run.index("--json-reports") + 1] == str(tmp_path / "reports.jsonl")
    assert run[run.index("--") + 1:] == plain
    plugin = t.command("plugin", tmp_path)
    options = plugin[plugin.index("--kfence-options") + 1]
    assert "--kfence" in plugin
    assert options == f"sample_rate=1:num_objects=4096:state_dir={tmp_path / 'state'}"
    # A rerun names the tests instead of the package's paths.
    assert t.command("plain", tmp_path, ["tests/test_a.py::test_x"])[-2] == \
        "tests/test_a.py::test_x"


def test_an_installed_package_is_tested_without_its_sources_first_on_the_path(tmp_path):
    assert trial(tmp_path, build="install").command("plain", tmp_path)[1:4] == [
        "-P", "-m", "pytest"]


def test_cpython_runs_regrtest_and_samples_its_allocator_from_a_runner(tmp_path):
    t = trial(tmp_path, name=field.CPYTHON, build="none", modules=["test_list", "test_dict"])
    plain = t.command("plain", tmp_path)
    assert plain == [sys.executable, "-m", "test", "--junit-xml", str(tmp_path / "junit.xml"),
                     "test_list", "test_dict"]
    sampled = t.command("plugin", tmp_path)
    assert sampled[1] == str(tmp_path / "sampled.py")
    runner = (tmp_path / "sampled.py").read_text()
    assert "kfence_py.enable(**{'sample_rate': '1'" in runner
    rerun = t.command("plain", tmp_path, ["test.test_dict.DictTest.test_x"])
    assert rerun[-2:] == ["test_dict", "--match=test.test_dict.DictTest.test_x"]


LISTING = '''# head
[[package]]
name = "a"
version = "1"
kind = "text"
tests = []

# CPython, last
[[package]]
name = "cpython"
version = "3.11.7"
kind = "interpreter"
tests = []
'''

CANDIDATES = '''# vetted
[[package]]
name = "a"
version = "9"
kind = "text"
tests = []

[[package]]
name = "b"
version = "2"
kind = "parser"            # a comment kept
tests = ["t"]
build_seconds = 3
'''


def test_candidates_are_merged_once_before_cpython(tmp_path):
    merged = field.merge_candidates(LISTING, CANDIDATES)
    path = tmp_path / "p.toml"
    path.write_text(merged)
    assert [(p.name, p.version) for p in field.load_packages(path)] == [
        ("a", "1"), ("b", "2"), ("cpython", "3.11.7")]
    assert 'kind = "parser"            # a comment kept' in merged
    assert merged.index('name = "b"') < merged.index("# CPython, last")
    assert field.merge_candidates(merged, CANDIDATES) == merged


def test_regrtest_outcomes_are_counted_by_module():
    outcomes = {"test.test_list.ListTest.test_a": "passed",
                "test.test_list.ListTest.test_b": "failed",
                "test.test_ctypes.test_x.T.test_c": "skipped"}
    assert field.per_module(outcomes) == {
        "test_ctypes": {"passed": 0, "failed": 0, "skipped": 1, "error": 0},
        "test_list": {"passed": 1, "failed": 1, "skipped": 0, "error": 0}}


def test_the_regrtest_runner_samples_python_objects_inside_tests_only(tmp_path):
    """Run for real on one small module: objects are guarded in its tests, none in the imports."""
    t = trial(tmp_path, name=field.CPYTHON, build="none", modules=["test_bool"])
    argv = t.command("plugin", tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    runner = tmp_path / "sampled.py"
    # The same runner, told to stop before regrtest: what it guarded until then.
    text = runner.read_text().replace("main()\n", "")
    (tmp_path / "imports.py").write_text(
        text + "import sys; print(kfence_py.stats().total_allocations, file=sys.stderr)\n")
    before = subprocess.run([sys.executable, str(tmp_path / "imports.py")], capture_output=True,
                            text=True, check=True)
    assert before.stderr.split()[-1] == "0"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seen = field.read_state_dir(state)
    assert seen.guarded > 1000, seen
