"""Frees by the wrong family, frees of memory that is not heap, guard-page frees and
canary checks of live objects: each caught with the object and the sentence that
explains it, and each correct twin left alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

GUARD = {"sample_rate": 1}
# Nothing sampled: every pointer is glibc's, and only check_free can see a bad free.
UNSAMPLED = {"sample_rate": 0, "sample_interval": 0, "check_free": 1}


@pytest.fixture(scope="module")
def families(programs):
    return programs.build("families.cpp", cxx=True, flags=["-w"])


def one_report(run):
    assert run.returncode == 66, run.stderr
    assert "done" in run.stdout, "the program goes on after the report"
    assert len(run.reports) == 1, run.stderr
    return run.reports[0]


@pytest.mark.parametrize(("case", "cache", "explanation"), [
    ("new_array_free", "new[]", "allocated by operator new[] and is freed by free()."),
    ("malloc_delete", "malloc", "allocated by malloc() and is freed by operator delete."),
    ("malloc_delete_array", "malloc",
     "allocated by malloc() and is freed by operator delete[]."),
    ("new_delete_array", "new", "allocated by operator new and is freed by operator delete[]."),
    ("new_array_delete", "new[]",
     "allocated by operator new[] and is freed by operator delete."),
    ("new_realloc", "new[]", "allocated by operator new[] and is freed by free()."),
])
def test_a_free_by_another_family_is_an_invalid_free(programs, families, case, cache,
                                                     explanation):
    report = one_report(programs.run(families, case, options=GUARD))
    assert (report.kind, report.access, report.function) == ("invalid free", None, case)
    assert report.cache == cache
    assert report.explanation == f"The object was {explanation}"
    assert report.address == report.object_start
    assert report.alloc_stack[0].function == case
    assert report.free_stack[0].function == case, "freed all the same, by the bad free"


def test_a_sized_delete_of_the_wrong_size(programs, families):
    report = one_report(programs.run(families, "sized_delete", options=GUARD))
    assert (report.kind, report.function, report.cache) == ("invalid free", "sized_delete", "new")
    assert report.size == 40
    assert report.explanation == ("The size given to operator delete is 4; "
                                  "the object's size is 40.")


@pytest.mark.parametrize("options", [GUARD, {**GUARD, "check_free": 1}, UNSAMPLED])
def test_right_families_and_sizes_are_not_reported(programs, families, options):
    run = programs.run(families, "good_families", options=options)
    assert run.returncode == 0 and run.reports == [], run.stderr
    assert "done" in run.stdout


def test_a_double_free_after_a_mismatch_is_reported_too(programs, families):
    run = programs.run(families, "mismatch_then_double_free", options=GUARD)
    assert run.returncode == 66 and "done" in run.stdout, run.stderr
    assert [r.explanation for r in run.reports] == [
        "The object was allocated by operator new[] and is freed by free().",
        "The object was already freed."]


def test_mismatches_can_be_switched_off(programs, families):
    run = programs.run(families, "new_array_free",
                       options={**GUARD, "alloc_dealloc_mismatch": 0})
    assert run.returncode == 0 and run.reports == [], run.stderr


def test_a_program_with_its_own_operator_new_is_not_judged(programs, tmp_path):
    # Its new takes memory from malloc, and the default delete gives it to free().
    src = tmp_path / "own_new.cpp"
    src.write_text(r"""
        #include <cstdio>
        #include <cstdlib>
        #include <new>
        void *operator new(std::size_t n) { void *p = std::malloc(n ? n : 1);
                                            if (!p) throw std::bad_alloc(); return p; }
        int main() { for (int i = 0; i < 100; i++) { int *p = new int(i); delete p; }
                     std::puts("done"); }
    """)
    exe = programs.build(src, cxx=True)
    run = programs.run(exe, options=GUARD)
    assert run.returncode == 0 and run.reports == [], run.stderr
    assert "done" in run.stdout


@pytest.mark.parametrize("options", [{}, GUARD, {**GUARD, "check_free": 1}])
def test_a_program_that_replaces_only_the_basic_operators(programs, options):
    # The standard lets a program replace operator new(size_t) and delete(void*) alone:
    # the runtime's sized delete, new[] and nothrow new call them.  Ours went around
    # them: glibc's free() got the program's memory and aborted the process.
    exe = programs.build("own_operators.cpp", cxx=True)
    run = programs.run(exe, options=options)
    assert run.returncode == 0 and run.reports == [], run.stderr
    assert run.stdout == "done live=0\n"


def test_operator_new_keeps_the_standard_semantics(programs, families):
    for options in (GUARD, UNSAMPLED):
        run = programs.run(families, "new_semantics", options=options)
        assert run.returncode == 0 and run.reports == [], run.stderr
        assert run.stdout.splitlines() == [
            "bad_alloc thrown", "nothrow new returned null",
            "new-handler called 1 time(s), then bad_alloc", "new[0] is unique", "done"]


@pytest.mark.parametrize(("case", "explanation"), [
    ("free_stack", r"The address is on the stack of thread (\d+), not from the heap\."),
    ("delete_stack", r"The address is on the stack of thread (\d+), not from the heap\."),
    ("free_thread_stack", r"The address is on the stack of thread (\d+), not from the heap\."),
    ("free_bss", r"The address is in \.bss of (.+), not from the heap\."),
    ("free_data", r"The address is in \.data of (.+), not from the heap\."),
    ("free_rodata", r"The address is in read-only data of (.+), not from the heap\."),
    ("free_text", r"The address is in the code of (.+), not from the heap\."),
    ("free_misaligned", r"The address is not (16)-byte aligned: no allocation function "
                        r"returned it\."),
])
def test_a_free_of_memory_that_is_not_heap(programs, families, case, explanation):
    run = programs.run(families, case, options=UNSAMPLED)
    report = one_report(run)
    assert (report.kind, report.access, report.object_index) == ("invalid free", None, None)
    expected = "thread_body" if case == "free_thread_stack" else case
    assert report.function == expected
    m = re.fullmatch(explanation, report.explanation or "")
    assert m, report.text
    pid = int(re.search(r"^pid (\d+)", report.text, re.M)[1])
    if "stack" in case:
        tid = int(m[1])
        assert (tid != pid) == (case == "free_thread_stack"), "the thread that freed"
    elif case != "free_misaligned":
        assert Path(m[1]).name == families.name, "the module is the program"


@pytest.mark.parametrize("case", ["free", "getattr"])
def test_check_free_in_a_thread_whose_heap_is_above_its_stack(programs, case):
    # Finding the thread's stack asks pthread_getattr_np, which frees inside (memory above
    # the stack, so looked at again) and holds the thread's lock while it does: once, it
    # hung in that recursion; it must neither hang nor report.
    exe = programs.build("heap_above_stack.c")
    run = programs.run(exe, case, options=UNSAMPLED, timeout=20)
    assert run.returncode == 0 and run.reports == [], run.stderr
    assert run.stdout == "done\n"


def test_frees_of_memory_that_is_not_heap_pass_without_check_free(programs, families):
    # glibc gets them as before (and may abort): the check is the option's.
    run = programs.run(families, "free_bss", options={"sample_rate": 0, "sample_interval": 0})
    assert run.reports == []


def test_every_good_free_passes_the_check(programs, families):
    run = programs.run(families, "good_frees", options=UNSAMPLED)
    assert run.returncode == 0 and run.reports == [], run.stderr
    run = programs.run(families, "good_frees", options={**GUARD, "check_free": 1})
    assert run.returncode == 0 and run.reports == [], run.stderr


def test_a_free_into_a_guard_page_names_the_neighbour_once(programs, families):
    run = programs.run(families, "guard_free",
                       options={**GUARD, "placement": "left", "dedup_reports": 0})
    report = one_report(run)
    assert (report.kind, report.function) == ("invalid free", "guard_free")
    assert report.distance == -1 and report.size == 1
    assert report.address == report.object_start - 1
    assert report.explanation == "The address is outside the object, next to it."
    assert report.alloc_stack[0].function == "guard_free"
    assert "(1B left of kfence-#0)" in report.text


# --- canary checks of live objects -------------------------------------------------

LIVE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
char *keep[4];
int main(int argc, char **argv)
{
	for (int i = 0; i < 4; i++)
		keep[i] = malloc(16);
	volatile char *p = keep[1];
	if (!strcmp(argv[1], "over"))
		p[17] = 'x';           /* in the page: a left-placed object's canary */
	printf("ready %d\n", getpid());
	fflush(stdout);
	/* Alive until told: a sampled allocation now and then serves a check. */
	for (int i = 0; i < atoi(argv[2]); i++) {
		free(malloc(8));
		usleep(1000);
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def live(programs, tmp_path_factory):
    src = tmp_path_factory.mktemp("live") / "live.c"
    src.write_text(LIVE)
    return programs.build(src)


@pytest.mark.parametrize("option", ["sweep_at_exit", "leak_check"])
def test_a_corrupted_live_object_is_found_at_exit(programs, live, option):
    run = programs.run(live, "over", "0",
                       options={**GUARD, "placement": "left", option: 1})
    corrupt = [r for r in run.reports if r.kind == "memory corruption"]
    assert len(corrupt) == 1, run.stderr
    report = corrupt[0]
    assert report.explanation == ("A canary check of live objects found this; "
                                  "the object is still allocated.")
    assert report.function == "main", "named after its allocation"
    assert report.address == report.object_start + 17 and report.size == 16
    assert report.corrupted.split()[0] == "0x78"
    assert run.returncode == 66


def test_intact_live_objects_are_not_reported(programs, live):
    run = programs.run(live, "intact", "0",
                       options={**GUARD, "placement": "left", "sweep_at_exit": 1})
    assert run.returncode == 0 and run.reports == [], run.stderr


def _kfence_py(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import kfence_py
    env = {**os.environ, "PYTHONPATH": str(Path(kfence_py.__file__).parent.parent)}
    return subprocess.run([sys.executable, "-m", "kfence_py", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60, check=False)


@pytest.mark.slow
def test_check_asks_a_running_process_to_look(programs, live, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(programs.lib), KFENCE_OPTIONS=(
        f"sample_rate=1:placement=left:state_dir={state}:report_path={state}/report"))
    for case, expected_status in (("over", 9), ("intact", 0)):
        proc = subprocess.Popen([str(live), case, "3000"], env=env, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().startswith("ready")
            time.sleep(0.1)
            out = _kfence_py("check", "--pid", str(proc.pid), "--state-dir", str(state),
                             cwd=tmp_path)
            assert out.returncode == expected_status, out.stderr + out.stdout
            first = out.stdout.splitlines()[0]
            corrupted = 1 if case == "over" else 0
            # The 4 objects, and what stdio allocated for itself.
            assert re.fullmatch(rf"pid {proc.pid}: canaries of ([4-9]) live object\(s\) "
                                rf"checked, {corrupted} corrupted", first), out.stdout
            if corrupted:
                assert "memory corruption at " in out.stdout
                assert "A canary check of live objects found this" in out.stdout
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_check_of_a_process_that_makes_no_allocation_says_so(programs, live, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(programs.lib),
               KFENCE_OPTIONS=f"sample_rate=1:state_dir={state}")
    sleeper = subprocess.Popen(["sleep", "30"], env=env)
    try:
        time.sleep(0.3)
        out = _kfence_py("check", "--pid", str(sleeper.pid), "--state-dir", str(state),
                         "--wait", "0.5", cwd=tmp_path)
        assert out.returncode == 10, out.stderr
        assert "not checked" in out.stdout
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_realloc_and_usable_size_wait_out_a_sweep(programs, tmp_path):
    # A sweep holds each live object BUSY while it reads its canaries.  realloc took such
    # an object for a bad pointer (freed it and returned NULL, and false use-after-free
    # and invalid-free reports followed) and malloc_usable_size said 0.
    exe = programs.build("sweep_realloc.c")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    run = programs.run(exe, str(state), "1000", options={**GUARD, "state_dir": str(state)})
    assert run.returncode == 0 and run.reports == [], run.stderr
    counts = dict(kv.split("=") for kv in run.stdout.split())
    assert int(counts["rounds"]) > 100 and int(counts["asked"]) > 1000
    assert (counts["bad_realloc"], counts["bad_usable"]) == ("0", "0"), run.stdout


@pytest.mark.slow
def test_a_free_while_a_sweep_report_waits_on_stderr_is_no_invalid_free(programs, tmp_path):
    # The sweep held the object BUSY while its report waited on a full stderr; the free
    # waited only so long, then called itself invalid ("no object") and leaked the slot.
    exe = programs.build("sweep_slow_stderr.c")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    env.update(LD_PRELOAD=str(programs.lib),
               KFENCE_OPTIONS=f"sample_rate=1:placement=left:state_dir={state}")
    proc = subprocess.Popen([str(exe), str(state)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # stderr unread: the report is stuck, the free comes meanwhile
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert out == "freed\n" and proc.returncode == 66
    listed = _kfence_py("reports", "--state-dir", str(state), cwd=tmp_path)
    kinds = re.findall(r"^BUG: KFENCE: (.+?) in ", listed.stdout, re.M)
    assert kinds == ["memory corruption"], listed.stdout + listed.stderr


# --- readable names ---------------------------------------------------------------

DEMANGLE = r"""
#include <cstdlib>
namespace app {
struct Cache {
	__attribute__((noinline)) static void drop(char *p, int n) { free(p); (void)n; }
};
}
int main() { char *p = new char[8]; app::Cache::drop(p, 1); return 0; }
"""


@pytest.mark.parametrize("symbolize", [True, False])
def test_cxx_names_are_demangled_where_reports_are_rendered(programs, tmp_path, symbolize):
    import json
    src = tmp_path / "names.cpp"
    src.write_text(DEMANGLE)
    exe = programs.build(src, cxx=True)
    jsonl = tmp_path / "reports.jsonl"
    out = _kfence_py("run", "--sample-rate", "1", "--json-reports", str(jsonl),
                     *([] if symbolize else ["--no-symbolize"]), "--", str(exe), cwd=tmp_path)
    assert out.returncode == 66, out.stderr
    assert "BUG: KFENCE: invalid free in app::Cache::drop(char*, int)" in out.stderr
    assert " in app::Cache::drop(char*, int)" in out.stderr.split("Invalid free of")[1]
    assert "_ZN3app" not in out.stderr
    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert record["function"].startswith("app::Cache::drop(char*, int)")
    assert record["explanation"] == ("The object was allocated by operator new[] and is "
                                     "freed by free().")
