"""The PyMem hooks beside other users of CPython's allocator (issue 9, item 15).

Guard objects handed out by our hooks must come back to kfence_free(): in
process (no preload) glibc's free() aborts on them ("munmap_chunk(): invalid
pointer").  Every test runs its interpreter in a child, which may crash.
"""

from __future__ import annotations

import os
import sys

import pytest

import kfence_py

# Many objects of many sizes, some grown (realloc), all freed: with sample_rate=1
# plenty of them are guard objects.  Indented as the scripts it goes into.
WORKLOAD = """
        def workload():
            objs = [str(i) * (i % 40) for i in range(3000)]
            objs += [bytearray(i % 900) for i in range(600)]
            objs.append({i: [i] * (i % 7) for i in range(500)})
            grown = []
            for i in range(2000):
                grown.append(i)
            objs.append(grown)
            return objs
"""


def test_tracemalloc_stop_after_enable_does_not_abort(run_python):
    """The regression of the issue: tracemalloc first, our hooks above it, stop()."""
    run = run_python("""
        import gc
        import tracemalloc
        tracemalloc.start(7)
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1)
        print("tracing", tracemalloc.is_tracing(), tracemalloc.get_traceback_limit())
    """ + WORKLOAD + """
        objs = workload()
        print("guarded", kfence_py.stats().currently_allocated > 100)
        tracemalloc.stop()
        del objs
        gc.collect()
        more = workload()
        del more
        print("done")
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "munmap_chunk" not in run.stderr
    assert "tracing True 7" in run.stdout
    assert "guarded True" in run.stdout
    assert "done" in run.stdout
    assert run.reports == []
    # One warning, saying what was lost.
    assert run.stderr.count("tracemalloc was restarted") == 1, run.stderr
    assert "traces of earlier allocations are lost" in run.stderr


def test_tracemalloc_still_traces_over_our_hooks(run_python):
    run = run_python("""
        import tracemalloc
        import kfence_py
        tracemalloc.start(3)
        kfence_py.enable(python_allocator=True, sample_rate=1)
        before = tracemalloc.get_traced_memory()[0]
        keep = [str(i) * 20 for i in range(5000)]
        grew = tracemalloc.get_traced_memory()[0] - before > 100_000
        tb = tracemalloc.get_object_traceback(keep[-1])
        print("grew", grew, "traceback", tb is not None and len(tb) >= 1)
        tracemalloc.stop()
        tracemalloc.start()  # over ours again: its stop() at exit restores ours
        del keep
        print("done")
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "grew True traceback True" in run.stdout
    assert "done" in run.stdout
    assert run.reports == []


@pytest.mark.slow
def test_x_tracemalloc_with_pytest_kfence(pytester: pytest.Pytester, native_dir, monkeypatch):
    """`python -X tracemalloc -m pytest --kfence`, a test stopping tracemalloc, and exit."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(native_dir), os.environ.get("PYTHONPATH", "")])))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("KFENCE_OPTIONS", raising=False)
    pytester.makepyfile(test_with_tracemalloc="""
        import tracemalloc
        import kfence_py

        KEPT = []

        def test_allocates():
            assert tracemalloc.is_tracing()
            assert kfence_py.python_allocator_sampled()
            KEPT.extend(str(i) * 9 for i in range(3000))

        def test_stops_tracemalloc():
            tracemalloc.stop()
            KEPT.clear()
            local = [bytearray(i % 700) for i in range(2000)]
            del local

        def test_after():
            KEPT.extend(str(i) for i in range(3000))
    """)
    result = pytester.run(sys.executable, "-X", "tracemalloc", "-m", "pytest",
                          "-p", "no:cacheprovider", "--kfence", "-v", timeout=300)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)
    assert "munmap_chunk" not in result.stderr.str()
    # The warning is shown, though pytest captured the logging of the test.
    result.stdout.fnmatch_lines(["*= kfence_py =*",
                                 "warning: tracemalloc was restarted above kfence_py's*"])


@pytest.mark.parametrize("how", [
    ["env:PYTHONMALLOC=debug"],
    ["env:PYTHONMALLOC=pymalloc_debug"],
    ["env:PYTHONMALLOC=malloc"],
    ["env:PYTHONMALLOC=malloc_debug"],
    ["-X", "dev"],
    ["-X", "dev", "-X", "tracemalloc"],
], ids=lambda how: " ".join(how).replace("env:", ""))
def test_cpython_debug_hooks_and_malloc(run_python, how):
    """Debug hooks below ours hand out blocks inside RAW guard objects: theirs, not ours."""
    args = [a for a in how if not a.startswith("env:")]
    env = dict(a[4:].split("=", 1) for a in how if a.startswith("env:"))
    run = run_python("""
        import gc
        import tracemalloc
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1)
    """ + WORKLOAD + """
        for _ in range(3):
            objs = workload()
            del objs
            gc.collect()
        tracemalloc.stop()
        stats = kfence_py.stats()
        print("sampled", kfence_py.python_allocator_sampled(),
              "freed", stats.total_frees > 1000, "bugs", stats.total_bugs)
    """, *args, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sampled True freed True bugs 0" in run.stdout, run.stdout + run.stderr[-3000:]
    assert run.reports == []


@pytest.mark.parametrize("pythonmalloc", ["pymalloc", "debug"])
@pytest.mark.parametrize("bug, kind", [
    ("use_after_decref()", "use-after-free"),
    ("overrun_pymem(64)", "out-of-bounds"),
    ("double_free_pymem(64)", "invalid free"),
])
def test_bugs_are_reported_under_debug_hooks(run_python, pythonmalloc, bug, kind):
    """Our own objects stay ours above the debug hooks: bugs on them are reported."""
    run = run_python(f"""
        import kfbugs
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1, placement="right")
        kfbugs.{bug}
        print("reported", kfence_py.stats().total_bugs)
    """, env={"PYTHONMALLOC": pythonmalloc})
    kinds = [r.kind for r in run.reports]
    assert kinds and all(k == kind for k in kinds), run.stderr[-3000:]
    assert "Fatal Python error" not in run.stderr


def test_foreign_hooks_below_are_refused_in_process(run_python):
    """A tool hooked before us may restore its saved allocator: we do not go above it."""
    run = run_python("""
        import kfbugs
        import kfence_py
        kfbugs.foreign_hook()
        kfence_py.enable(python_allocator=True, sample_rate=1)
        kfence_py.enable(python_allocator=True, sample_rate=1)
        objs = [str(i) * 7 for i in range(3000)]
        kfbugs.foreign_unhook()
        del objs
        print("sampled", kfence_py.python_allocator_sampled())
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sampled False" in run.stdout
    assert run.stderr.count("hooked by another tool") == 1, run.stderr


def test_foreign_hooks_below_tracemalloc_are_looked_at_once(run_python):
    run = run_python("""
        import tracemalloc
        import kfbugs
        import kfence_py
        kfbugs.foreign_hook()
        tracemalloc.start()
        kfence_py.enable(python_allocator=True, sample_rate=1)
        keep = [str(i) * 9 for i in range(100)]
        kfence_py.enable(python_allocator=True, sample_rate=1)  # tracemalloc left alone
        print("traced", tracemalloc.get_object_traceback(keep[-1]) is not None,
              "sampled", kfence_py.python_allocator_sampled())
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "traced True sampled False" in run.stdout
    assert run.stderr.count("hooked by another tool") == 1, run.stderr
    assert run.stderr.count("tracemalloc was restarted (kfence_py looked") == 1, run.stderr


def test_foreign_hooks_above_may_restore_what_they_found(run_python):
    run = run_python("""
        import kfbugs
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1)
        kfbugs.foreign_hook()
        objs = [str(i) * 7 for i in range(3000)]
        kfbugs.foreign_unhook()
        del objs
        more = [str(i) * 7 for i in range(3000)]
        del more
        print("sampled", kfence_py.python_allocator_sampled(),
              "bugs", kfence_py.stats().total_bugs)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sampled True bugs 0" in run.stdout
    assert run.stderr == ""


def test_removal_by_foreign_hooks_below_is_detected_and_repaired(run_python):
    """Preloaded, hooking over another tool is allowed (free() is ours); its removal is seen."""
    run = run_python("""
        import kfbugs
        import kfence_py
        from kfence_py import _pyext
        kfbugs.foreign_hook()
        kfence_py.enable(python_allocator=True, sample_rate=1)
        print("sampled", kfence_py.python_allocator_sampled(), _pyext.python_hooks())
        objs = [str(i) * 7 for i in range(3000)]
        kfbugs.foreign_unhook()
        print("after unhook", _pyext.python_hooks())
        _pyext.set_python_sampling(True)  # as if nothing happened: the sampled path sees it
        del objs
        objs = [str(i) * 7 for i in range(3000)]
        print("sampling stopped", not kfence_py.python_allocator_sampled())
        kfence_py.enable(python_allocator=True, sample_rate=1)
        print("repaired", kfence_py.python_allocator_sampled(), _pyext.python_hooks())
        before = kfence_py.stats().total_allocations
        more = [str(i) * 7 for i in range(3000)]
        print("sampling again", kfence_py.stats().total_allocations > before)
        del objs, more
    """, env={"LD_PRELOAD": str(kfence_py.lib_path())})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sampled True installed" in run.stdout, run.stdout + run.stderr
    assert "after unhook removed" in run.stdout
    assert "sampling stopped True" in run.stdout
    assert "repaired True installed" in run.stdout
    assert "sampling again True" in run.stdout
    assert run.stderr.count("another tool removed kfence_py's hooks") == 1, run.stderr
    assert run.reports == []


def test_no_sample_while_one_domain_lost_our_hooks(run_python):
    """Only OBJ taken out: the sampled path of RAW and MEM sees it and hands out nothing."""
    run = run_python("""
        import kfbugs
        import kfence_py
        from kfence_py import _pyext

        def pymem_samples_since(t0):
            return sum(o.cache == "pymem" and o.alloc_time > t0
                       for o in kfence_py.objects())

        def now():
            return max((o.alloc_time for o in kfence_py.objects()), default=0.0)

        kfbugs.foreign_hook()
        kfence_py.enable(python_allocator=True, sample_rate=1)
        kfbugs.foreign_unhook(2)  # PYMEM_DOMAIN_OBJ
        t0 = now()
        bufs = [b"x" * (i % 300) for i in range(3000)]  # PyObject_Malloc: no hook
        raw = [bytearray(i % 300) for i in range(3000)]  # PyMem_Malloc: our hook
        print("lost", _pyext.python_hooks(), "samples", pymem_samples_since(t0))
        kfence_py.enable(python_allocator=True, sample_rate=1)
        t0 = now()
        more = [bytearray(i % 300) for i in range(3000)]
        print("repaired", _pyext.python_hooks(), "sampling", pymem_samples_since(t0) > 0)
        del bufs, raw, more
    """, env={"LD_PRELOAD": str(kfence_py.lib_path())})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "lost removed samples 0" in run.stdout, run.stdout + run.stderr
    assert "repaired installed sampling True" in run.stdout
    assert "reinstalled them in 1 domain(s)" in run.stderr
    assert run.reports == []


# --- the sampling decision of the hooks (their fast path is a countdown) ---

CHURN = """
        import kfbugs
        import kfence_py
        from kfence_py import _pyext

        def churn(*args):
            before = kfence_py.stats()
            kfbugs.pymem_churn(*args)
            after = kfence_py.stats()
            return (after.total_allocations - before.total_allocations,
                    after.total_frees - before.total_frees)
"""


@pytest.mark.parametrize("domain", [0, 1, 2], ids=["raw", "mem", "obj"])
def test_each_domain_samples_one_call_in_sample_rate(run_python, domain):
    """50k calls at sample_rate=100: about 500 samples (the countdown is uniform, mean 100)."""
    run = run_python(CHURN + f"""
        kfence_py.enable(python_allocator=True, sample_rate=100)
        print("sampled %d freed %d" % churn({domain}, 50_000, 48))
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    sampled, freed = map(int, run.stdout.split()[1::2])
    # The count's standard deviation is about 13: these bounds are 7 of them away.
    assert 400 <= sampled <= 600, run.stdout
    # Every sampled object came back to kfence_free(); Python's own may be live still,
    # or (sampled before the window) freed in it.
    assert abs(sampled - freed) <= 3, run.stdout
    assert run.reports == []


def test_raw_domain_sampled_from_threads_without_the_gil(run_python):
    """RAW is called without the GIL: each thread counts down on its own and frees its own."""
    run = run_python(CHURN + """
        kfence_py.enable(python_allocator=True, sample_rate=100)
        print("sampled %d freed %d" % churn(0, 25_000, 48, 4))
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    sampled, freed = map(int, run.stdout.split()[1::2])
    assert 800 <= sampled <= 1200, run.stdout  # 4 x 25k calls at 1 in 100
    # The counters are the process's: the interpreter's own objects sampled before the
    # window (stats() itself, the thread machinery) may be freed in it, and the reverse.
    assert abs(sampled - freed) <= 3, run.stdout
    assert run.reports == []


def test_sampling_switched_off_then_on_resumes_at_once(run_python):
    """While off the hooks look at the switch rarely; switched on, the next call looks."""
    run = run_python(CHURN + """
        kfence_py.enable(python_allocator=True, sample_rate=100)
        for n in (1_000, 3_000, 5_000, 7_000):
            _pyext.set_python_sampling(False)
            print("off %d %d" % churn(2, n, 48))
            _pyext.set_python_sampling(True)
            print("on %d %d" % churn(2, 1_000, 48))
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line for line in lines if line.startswith("off")] == ["off 0 0"] * 4, run.stdout
    # 1000 calls at 1 in 100: about 10 samples each time (not 0 for a rest of a long pause),
    # plus those of kfence_py.stats() itself, whose Python objects are made inside the
    # window: 16 to 21 samples a window in one CI run, so the upper bound is loose.
    on = [int(line.split()[1]) for line in lines if line.startswith("on")]
    assert len(on) == 4 and all(3 <= n <= 40 for n in on), run.stdout


def test_a_stack_under_python_stops_after_eight_interpreter_frames(run_python):
    """Deep Python fills a native stack with the eval loop's frames, which reports fold
    into one line: the capture stops after 8 of them (it was 64 frames, 250-450 ns each)."""
    run = run_python("""
        import ctypes, functools, kfence_py
        def deep(n):
            # Each level is a call from C (functools.reduce) back into Python.
            return functools.reduce(lambda a, b: deep(n - 1), [0, 1]) if n else kfence_py.alloc(16)
        buf = deep(40)
        (obj,) = [o for o in kfence_py.objects() if o.address == buf.address]
        malloc = ctypes.cast(ctypes.pythonapi.PyObject_Malloc, ctypes.c_void_p).value
        maps = [line.split() for line in open("/proc/self/maps")]
        path = next(m[5] for m in maps if len(m) > 5
                    and int(m[0].split("-")[0], 16) <= malloc < int(m[0].split("-")[1], 16))
        text = [tuple(int(x, 16) for x in m[0].split("-")) for m in maps
                if len(m) > 5 and m[5] == path and "x" in m[1]]
        interp = sum(any(lo <= pc < hi for lo, hi in text) for pc in obj.alloc_stack)
        print(len(obj.alloc_stack), interp)
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    depth, interpreter = map(int, run.stdout.split())
    assert interpreter == 8, run.stdout
    assert depth < 20, run.stdout  # 40 levels of reduce() would fill all 64 frames


def test_a_covered_python_line_leaves_the_pool_to_new_lines(run_python):
    """The covered-site filter applies to CPython's allocator: a Python object's site is
    the bytecode instruction that made it.  Past the threshold, a line that has a live
    guarded object gets no more, and the slots left go to lines not seen yet (without a
    site, one line filled the pool and nothing new was guarded after it)."""
    run = run_python("""
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1, num_objects=64,
                         skip_covered_thresh=50)
        def guarded(objs):  # bytes and bytearray are not tracked by the GC: id() is the block
            starts = {o.address for o in kfence_py.objects()}
            return sum(id(o) in starts for o in objs)
        def covered():
            return kfence_py.stats().as_dict()["skipped"]["covered"]
        keep = [bytearray(100) for _ in range(3000)]
        print("first", guarded(keep), covered())
        # Eight new sites (code objects of their own).  The filter is a counting Bloom
        # filter: one new site alone may find its counters taken by live sites' (it
        # happened once on 3.13), eight all at once may not.
        more = []
        for k in range(8):
            more += eval(compile("[bytes(200) for _ in range(400)]", f"<new {k}>", "eval"))
        print("second", guarded(keep), guarded(more), covered())
    """)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = (line.split()[1:] for line in run.stdout.splitlines())
    kept, covered = map(int, first)
    # The first line stops short of the pool's size (28 of its objects guarded in one run),
    # its other allocations skipped as covered.  Without a site: 59 and 0.
    assert 1 <= kept < 48, run.stdout
    assert covered > 2000, run.stdout
    # The new lines were still guarded, then covered in turn.
    kept_after, more, covered_after = map(int, second)
    assert kept_after == kept and more >= 1, run.stdout
    assert covered_after - covered > 2000, run.stdout
    assert run.reports == []
