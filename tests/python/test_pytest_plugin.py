"""The pytest plugin, run in a child pytest (with its faulthandler plugin on)."""

from __future__ import annotations

import os

import pytest

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
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("KFENCE_OPTIONS", raising=False)
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
def test_unknown_kfence_option_is_a_usage_error(child):
    child.makepyfile(test_x="def test_x(): pass")
    result = child.runpytest_subprocess("--kfence", "--kfence-options", "sample_rat=1")
    assert result.ret != 0
    assert "unknown option 'sample_rat'" in result.stderr.str() + result.stdout.str()


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
