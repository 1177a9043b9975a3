"""kfence_py from Python: guarded buffers, CPython's allocator sampled, the state."""

from __future__ import annotations

import ctypes
import gc
import os

import pytest

import kfence_py

# --- guarded buffers, in this process ----------------------------------------


def test_buffer_protocol_and_fields():
    with kfence_py.alloc(64) as buf:
        assert buf.size == len(buf) == 64 and buf.address % 16 == 0
        view = memoryview(buf)
        assert view.nbytes == 64 and not view.readonly
        view[:5] = b"hello"
        view.release()
        assert bytes(buf)[:5] == b"hello" and bytes(buf)[5:] == bytes(59), "zeroed"
        arr = buf.as_ctypes()
        assert ctypes.addressof(arr) == buf.address and arr.raw[:5] == b"hello"
        del arr
        gc.collect()
    assert buf.freed


def test_right_placement_ends_at_the_guard_page():
    page = os.sysconf("SC_PAGESIZE")
    with kfence_py.alloc(100, placement="right", align=1) as buf:
        assert (buf.address + 100) % page == 0
    with kfence_py.alloc(100, placement="left") as buf:
        assert buf.address % page == 0


def test_numpy_frombuffer():
    numpy = pytest.importorskip("numpy")
    with kfence_py.alloc(80) as buf:
        arr = numpy.frombuffer(buf, dtype=numpy.float64)
        arr[:] = numpy.arange(10)
        assert float(arr.sum()) == 45.0
        del arr


def test_free_refuses_while_a_view_lives_and_access_after_free_raises():
    buf = kfence_py.alloc(16)
    view = memoryview(buf)
    with pytest.raises(BufferError, match="1 exported view"):
        buf.free()
    view.release()
    buf.free()
    for use in (bytes, memoryview, lambda b: b.address, lambda b: b.free()):
        with pytest.raises(ValueError, match="freed GuardedBuffer"):
            use(buf)
    assert "freed" in repr(buf)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"size": 0}, ValueError, "size must be 1.."),
    ({"size": 5000}, ValueError, "size must be 1.."),
    ({"size": 2.5}, TypeError, "size must be an int"),
    ({"size": 8, "placement": "middle"}, ValueError, "placement must be one of"),
    ({"size": 8, "align": 3}, ValueError, "align must be 0 or a power of two"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        kfence_py.alloc(**kwargs)


def test_counters_see_guarded_buffers():
    before = kfence_py.stats()
    with kfence_py.alloc(10):
        during = kfence_py.stats()
        assert during.currently_allocated == before.currently_allocated + 1
        live = [o for o in kfence_py.objects()
                if o.state == "allocated" and o.cache == "kfence_alloc"]
        assert live and live[-1].size == 10
    after = kfence_py.stats()
    assert after.total_frees == before.total_frees + 1
    assert after.currently_allocated == before.currently_allocated


# --- bugs in C code, each in a child interpreter ------------------------------


def test_pool_exhausted(run_python):
    run = run_python("""
        import kfence_py
        kfence_py.enable(num_objects=4)
        held = [kfence_py.alloc(8) for _ in range(4)]
        try:
            kfence_py.alloc(8)
        except kfence_py.PoolExhausted as exc:
            print("exhausted:", exc)
        held.pop().free()
        kfence_py.alloc(8)
        print("after a free: ok")
    """)
    assert run.returncode == 0, run.stderr
    assert "exhausted: all 4 pool slots hold live objects" in run.stdout
    assert "after a free: ok" in run.stdout


def test_ctypes_function_writing_past_a_guarded_buffer(run_python):
    run = run_python("""
        import ctypes, os
        import kfence_py
        lib = ctypes.CDLL(os.environ["CFUNCS"])
        buf = kfence_py.alloc(32, placement="right")
        view = buf.as_ctypes()
        lib.fill(view, ctypes.c_size_t(33))
        del view
        buf.free()
        print("went on")
    """)
    assert run.returncode == 66 and "went on" in run.stdout, run.stderr
    (report,) = run.reports
    assert (report.kind, report.access, report.function) == ("out-of-bounds", "write", "fill")
    assert report.distance == 32 and report.size == 32 and report.cache == "kfence_alloc"


def test_guarded_buffer_used_from_c_after_free(run_python):
    run = run_python("""
        import ctypes, os
        import kfence_py
        lib = ctypes.CDLL(os.environ["CFUNCS"])
        buf = kfence_py.alloc(32)
        address = buf.address
        buf.free()
        print("peek:", lib.peek(ctypes.c_void_p(address)))
    """)
    assert run.returncode == 66, run.stderr
    (report,) = run.reports
    assert (report.kind, report.access, report.function) == ("use-after-free", "read", "peek")


def test_use_of_a_freed_pyobject_after_a_wrong_decref(run_python):
    run = run_python("""
        import kfence_py, kfbugs

        def make_the_mistake():
            return kfbugs.use_after_decref()

        kfence_py.enable(python_allocator=True, sample_rate=1, num_objects=1024)
        print("size read:", make_the_mistake())
    """)
    assert run.returncode == 66, run.stdout + run.stderr
    (report,) = run.reports
    assert (report.kind, report.access) == ("use-after-free", "read")
    assert report.function == "use_after_decref" and report.cache == "pymem"
    assert any("in make_the_mistake" in line for line in report.alloc_python), report.text
    assert any("in make_the_mistake" in line for line in report.free_python), report.text
    assert report.alloc_python[0].startswith('File "') and "line 5" in report.alloc_python[0]
    assert report.alloc_stack[0].function == "PyBytes_FromStringAndSize", "hooks left out"


def test_overrun_of_a_pymem_buffer(run_python):
    run = run_python("""
        import kfence_py, kfbugs
        kfence_py.enable(python_allocator=True, sample_rate=1, placement="right")

        def write_past_the_end():
            kfbugs.overrun_pymem(64)

        write_past_the_end()
        print("went on")
    """)
    assert run.returncode == 66 and "went on" in run.stdout, run.stderr
    (report,) = run.reports
    assert (report.kind, report.access, report.function) == ("out-of-bounds", "write",
                                                             "overrun_pymem")
    assert report.size == 64 and report.distance == 64
    assert any("in write_past_the_end" in line for line in report.alloc_python)


def test_reports_are_readable_from_python(run_python):
    run = run_python("""
        import kfence_py, kfbugs
        kfence_py.enable(python_allocator=True, sample_rate=1)
        kfbugs.use_after_decref()
        kfence_py.disable()
        (record,) = kfence_py.reports()
        print(record.kind, record.access, record.object.cache, record.object.size > 100)
        print("python at free:", "use_after_decref" not in record.object.free_python)
        print("stats bugs:", kfence_py.stats().total_bugs)
    """)
    assert "use-after-free read pymem True" in run.stdout, run.stdout + run.stderr
    assert "stats bugs: 1" in run.stdout


WORKLOAD = """
    import hashlib, json, re, sqlite3, sys
    {enable}
    data = {{str(i): [i, str(i) * 3, {{"k": i / 7}}] for i in range(3000)}}
    text = json.dumps(data, sort_keys=True)
    words = sorted(set(re.findall(r"[0-9]+", text)))[:50]
    db = sqlite3.connect(":memory:")
    db.execute("create table t (k text, v real)")
    db.executemany("insert into t values (?, ?)", [(k, v[2]["k"]) for k, v in data.items()])
    total = db.execute("select count(*), round(sum(v), 6) from t").fetchone()
    try:
        import numpy
        arr = numpy.arange(10000, dtype=float).reshape(100, 100)
        extra = float((arr @ arr.T).trace())
    except ImportError:
        extra = None
    print(hashlib.sha256(text.encode()).hexdigest(), words[:5], total, extra)
"""


def test_correct_workload_reports_nothing_and_gives_same_results(run_python):
    plain = run_python(WORKLOAD.format(enable=""))
    sampled = run_python(WORKLOAD.format(enable=(
        "import kfence_py; kfence_py.enable(python_allocator=True, sample_rate=1, "
        "num_objects=4096)")))
    assert plain.returncode == sampled.returncode == 0, sampled.stderr
    assert sampled.stdout == plain.stdout and not sampled.reports


def test_realloc_of_zero_size_pymem_objects(run_python):
    run = run_python("""
        import io, kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1)
        for i in range(200):
            s = io.StringIO()  # PyMem_Malloc(0), then PyMem_Realloc
            s.write("x" * i)
            assert s.getvalue() == "x" * i
        print("ok", kfence_py.stats().total_bugs)
    """)
    assert run.returncode == 0 and "ok 0" in run.stdout, run.stdout + run.stderr
    assert not run.reports


def test_enable_validates_options():
    with pytest.raises(ValueError, match="sample_rate: expected an integer"):
        kfence_py.enable(sample_rate="often")
    with pytest.raises(ValueError, match="unknown option 'sample_rat'"):
        kfence_py.enable(sample_rat=1)


def test_enable_when_preloaded_attaches_to_the_same_state(run_python):
    run = run_python("""
        import kfence_py
        from kfence_py._native import lib
        before = kfence_py.stats().total_allocations
        kfence_py.enable(sample_rate=1)
        x = [bytearray(1000) for _ in range(600)]  # > 512 bytes: malloc, not pymalloc
        grew = kfence_py.stats().total_allocations > before
        print("interposing", lib.kfence_is_interposing(), "grew", grew)
        print("rate", kfence_py.stats().sample_rate)
    """, env={"LD_PRELOAD": str(kfence_py.lib_path())})
    assert "interposing 1 grew True" in run.stdout, run.stdout + run.stderr
    assert "rate 1" in run.stdout


def test_disable_stops_sampling(run_python):
    run = run_python("""
        import kfence_py
        kfence_py.enable(python_allocator=True, sample_rate=1)
        kfence_py.disable()
        before = kfence_py.stats().total_allocations
        x = [str(i) * 10 for i in range(5000)]
        same = kfence_py.stats().total_allocations == before
        print("enabled", kfence_py.is_enabled(), "same", same)
    """)
    assert "enabled False same True" in run.stdout, run.stdout + run.stderr
