"""Threads, fork, signal handler chaining, a full pool and bad options."""

from __future__ import annotations

import signal

import pytest

EVERY = {"sample_rate": 1}


@pytest.fixture(scope="module")
def threads(programs):
    return programs.build("threads.c")


@pytest.fixture(scope="module")
def signals(programs):
    return programs.build("signals.c")


@pytest.mark.parametrize("options", [pytest.param(EVERY, marks=pytest.mark.slow),
                                     {"sample_rate": 1, "num_objects": 8}, None],
                         ids=["every", "small-pool", "default"])
def test_threads_free_each_others_objects(programs, threads, options):
    run = programs.run(threads, "threads", "4", "20000", options=options, timeout=120)
    assert run.returncode == 0 and not run.reports, run.stderr
    counters = run.counters()
    assert counters["allocated"] == counters["allocs"] - counters["frees"]
    if options == EVERY:
        assert counters["allocs"] > 1000, "sample_rate=1 guards every allocation slots allow"


def test_fork_while_threads_allocate(programs, threads):
    run = programs.run(threads, "fork", "3", "200", options=EVERY, timeout=120)
    assert run.returncode == 0 and "bad children: 0" in run.stdout, run.stdout + run.stderr
    assert not run.reports


def test_forked_child_reports_with_its_own_pid_and_status(programs, tmp_path):
    source = tmp_path / "forkbug.c"
    source.write_text("""
#include <stdlib.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1) { char *p = malloc(16); free(p); p[0] = 1; }  /* the parent's own bug */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { char *p = malloc(16); free(p); p[0] = 1; return 0; }
    int status; waitpid(pid, &status, 0);
    printf("child %d status %d\\n", (int)pid, WEXITSTATUS(status));
    return 0;
}
""")
    exe = programs.build(source)
    run = programs.run(exe, options=EVERY)
    child = run.stdout.split()[1]
    assert f"child {child} status 66" in run.stdout, "the child's exit status marks its bug"
    assert run.returncode == 0, "the parent had no bug"
    (report,) = run.reports
    assert report.kind == "use-after-free" and f"pid {child}," in report.text

    both = programs.run(exe, "parent-bug-too", options=EVERY)
    assert both.returncode == 66 and len(both.reports) == 2
    child = both.stdout.split()[1]
    assert f"child {child} status 66" in both.stdout


def test_child_without_bugs_exits_cleanly_after_parent_bug(programs, tmp_path):
    source = tmp_path / "forkclean.c"
    source.write_text("""
#include <stdlib.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    char *p = malloc(16); free(p); p[0] = 1;
    pid_t pid = fork();
    if (pid == 0) return 0;
    int status; waitpid(pid, &status, 0);
    printf("child status %d\\n", WEXITSTATUS(status));
    return 0;
}
""")
    run = programs.run(programs.build(source), options=EVERY)
    assert "child status 0" in run.stdout and run.returncode == 66


@pytest.mark.parametrize(("handler", "fault", "returncode", "stdout", "reports"), [
    ("none", "pool", 66, "survived", 1),
    ("none", "null", -signal.SIGSEGV, "", 0),
    ("none", "kill", -signal.SIGSEGV, "", 0),
    ("plain", "pool", 66, "survived", 1),
    ("plain", "null", 3, "app plain handler", 0),
    ("plain", "kill", 3, "app plain handler", 0),
    ("siginfo", "pool", 66, "survived", 1),
    ("siginfo", "null", 5, "app siginfo handler, code>0: y", 0),
    ("siginfo", "kill", 5, "app siginfo handler, code>0: n", 0),
    ("signal", "pool", 66, "survived", 1),
    ("signal", "null", 3, "app plain handler", 0),
    ("restoring", "pool", 66, "survived", 1),
    ("restoring", "null", -signal.SIGSEGV, "app restoring handler", 0),
    ("ignore", "null", -signal.SIGSEGV, "", 0),
    ("ignore", "kill", 0, "survived", 0),
])
def test_handler_installed_after_ours(programs, signals, handler, fault, returncode, stdout,
                                      reports):
    run = programs.run(signals, handler, fault, options=EVERY)
    assert run.returncode == returncode, run.stdout + run.stderr
    assert "sigaction reports the app's handler: yes" in run.stdout
    assert stdout in run.stdout
    assert len(run.reports) == reports
    if reports:
        assert run.reports[0].function == "pool_fault"


def test_handler_installed_in_a_constructor(programs, signals):
    run = programs.run(signals, "x", "null", options=EVERY, env={"APP_HANDLER_EARLY": "siginfo"})
    assert run.returncode == 5 and "app siginfo handler, code>0: y" in run.stdout


def test_handler_installed_before_the_library_started(programs):
    exe = programs.build("late_init.c")
    run = programs.run(exe, str(programs.lib), preload=False)
    assert "init=0 interposing=0" in run.stdout
    assert "survived the pool fault" in run.stdout
    assert run.returncode == 5 and "app handler" in run.stdout, "ours chains to theirs"
    assert [r.kind for r in run.reports] == ["use-after-free"]


def test_full_pool_falls_back_to_glibc(programs, tmp_path):
    source = tmp_path / "hold.c"
    source.write_text("""
#include "kftest.h"
int main(void) {
    char *held[100];
    for (int i = 0; i < 100; i++) { held[i] = malloc(100); memset(held[i], i, 100); }
    int guarded = 0;
    for (int i = 0; i < 100; i++) { guarded += kf_test_guarded(held[i]); free(held[i]); }
    printf("guarded %d\\n", guarded);
    kf_test_print_counters();
    return 0;
}
""")
    run = programs.run(programs.build(source),
                       options={"sample_rate": 1, "num_objects": 4, "skip_covered_thresh": 100})
    assert run.returncode == 0 and not run.reports, run.stderr
    assert "guarded 4" in run.stdout
    assert run.counters()["capacity"] >= 96


def test_bad_options_warn_once_each_and_keep_defaults(programs, threads):
    bad = ("sample_rate=abc:foo=1:num_objects:align=3:placement=middle:sample_interval=-5"
           ":exitcode=99999999999999999999999:halt_on_error=maybe::stack_depth=65")
    run = programs.run(threads, "threads", "2", options=bad)
    assert run.returncode == 0 and not run.reports
    assert len(run.warnings) == 9, run.stderr  # one per bad item
    assert "unknown option 'foo'" in run.stderr
    assert "'num_objects' in KFENCE_OPTIONS is not key=value" in run.stderr
    assert "keeping align=16" in run.stderr
    assert "keeping placement=random" in run.stderr


def test_enabled_0_leaves_everything_to_glibc(programs, threads):
    run = programs.run(threads, "threads", "2", options={"enabled": 0, "sample_rate": 1})
    assert run.returncode == 0 and "counters: none" in run.stdout


@pytest.fixture(scope="module")
def sampling(programs):
    return programs.build("sampling.c")


def test_time_gate_samples_at_most_once_per_interval(programs, sampling):
    run = programs.run(sampling, "400", options={"sample_interval": 50})
    allocs = run.counters()["allocs"]
    # 400 ms at one sample per 50 ms: 8 gates, +1 for the one open at start
    assert 3 <= allocs <= 9, run.stdout


def test_burst_adds_successive_samples(programs, sampling):
    run = programs.run(sampling, "200", options={"sample_interval": 100000, "burst": 5})
    assert run.counters()["allocs"] == 6, "the first gate and its burst of 5"


def test_sample_rate_samples_about_one_in_n(programs, sampling):
    run = programs.run(sampling, "0", "200000", options={"sample_rate": 100})
    allocs = run.counters()["allocs"]
    assert 1500 <= allocs <= 2500, run.stdout


@pytest.mark.parametrize(("rate", "most"), [(1_000_000, 2), (200, 15)])
def test_a_new_thread_is_not_sampled_for_being_new(programs, rate, most):
    """200 threads alive at once, 4 allocations each (plus the program's
    own): at sample_rate=N about 800/N are guarded, not one per thread
    (every thread's first allocation was, whatever N)."""
    run = programs.run(programs.build("thread_start.c"), options={"sample_rate": rate})
    assert run.returncode == 0, run.stderr
    assert run.counters()["allocs"] <= most, run.stdout


def test_sample_rate_1_still_guards_every_allocation_of_a_new_thread(programs):
    run = programs.run(programs.build("thread_start.c"),
                       options={"sample_rate": 1, "num_objects": 1024,
                                "skip_covered_thresh": 100})
    assert run.counters()["allocs"] >= 800, run.stdout


def test_sample_interval_0_switches_the_time_gate_off(programs, sampling):
    """As the kernel's kfence.sample_interval=0; sample_rate still samples on its own."""
    run = programs.run(sampling, "200", options={"sample_interval": 0})
    assert run.returncode == 0 and run.counters()["allocs"] == 0, run.stdout
    run = programs.run(sampling, "0", "200000", options={"sample_interval": 0, "sample_rate": 100})
    assert 1500 <= run.counters()["allocs"] <= 2500, run.stdout


@pytest.mark.parametrize(("thresh", "caught"), [(75, True), (100, False)])
def test_a_new_site_is_guarded_in_a_pool_full_of_one_site(programs, thresh, caught):
    """200 live objects of one start-up site in a 16-slot pool, then a one-byte
    overflow at a new site.  With the coverage filter (the default threshold,
    75%) the start-up site stops taking slots at 12 and the new site gets one;
    with it off (100) the pool is full and the bug goes unseen."""
    run = programs.run(programs.build("coverage.c"),
                       options={"sample_rate": 1, "num_objects": 16, "placement": "right",
                                "skip_covered_thresh": thresh})
    counters = run.counters()
    assert f"new site guarded: {int(caught)}" in run.stdout, run.stdout
    if caught:
        (report,) = run.reports
        assert report.kind == "out-of-bounds" and report.access == "write"
        assert report.function == "new_site"
        # 12 start-up objects (75% of 16), then only other sites: stdio's buffer, new_site's
        assert counters["allocated"] <= 16 and counters["covered"] >= 185, counters
    else:
        assert not run.reports and counters["capacity"] >= 185 and counters["covered"] == 0
