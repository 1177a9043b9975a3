"""Catch rate: is a bug executed once, late, at a call site not seen before, caught?

The test-suite mode (``kfence-py run --sample-rate 1``) is only worth its cost
if it keeps checking new code after start-up has filled the pool.  Each
scenario runs a real workload that fills the pool first, then calls a buggy
C function exactly once, and counts the runs in which kfence_py reported it:

* ``cpython``: a slice of CPython's own regression tests (unittest modules of
  Lib/test, at least --min-tests tests), with one test in the middle that
  calls the bug from a C extension;
* ``package``: a third-party package's own test suite (simplejson, pinned,
  built from its sdist with -g: a C extension and 143 tests under pytest),
  with one test file in the middle of the run that calls the bug;
* ``service``: a C program that keeps --objects long-lived objects from a few
  start-up sites, churns allocations for --seconds, then runs the bug at a
  new site.

Bugs: ``overflow`` (one byte past a 16-byte malloc) and ``uaf`` (a read of a
freed 16-byte object).  Each is run --runs times with the default options
(``coverage``: the covered-site filter on) and, for comparison, with
``skip_covered_thresh=100`` (``no-coverage``: the pool is first come, first
served, as before the filter).  Wall time is compared with a plain run.

    python bench/catch.py                      # every scenario, 5 runs each
    python bench/catch.py --seconds 600        # the service churns 10 minutes

The table goes to stdout (markdown) after the machine and the kfence_py
commit (machine.py), and the raw results, with the same record under
"machine", to bench/results/catch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import machine
import sdist

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "catch.json"

EXTENSION = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

/* One byte past a 16-byte object, once (volatile: the stores before free() stay). */
static PyObject *overflow(PyObject *self, PyObject *arg)
{
	volatile char *p = malloc(16);
	for (int i = 0; i <= 16; i++)
		p[i] = (char)i;
	free((void *)p);
	Py_RETURN_NONE;
}

/* A read of a freed 16-byte object, once. */
static PyObject *uaf(PyObject *self, PyObject *arg)
{
	volatile char *p = malloc(16);
	p[0] = 1;
	free((void *)p);
	return PyLong_FromLong(p[0]);
}

static PyMethodDef methods[] = {
	{ "overflow", overflow, METH_NOARGS, NULL },
	{ "uaf", uaf, METH_NOARGS, NULL },
	{ NULL, NULL, 0, NULL },
};
static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "catchbug", NULL, -1, methods };
PyMODINIT_FUNC PyInit_catchbug(void) { return PyModule_Create(&module); }
"""

RUNNER = r"""
import sys, unittest, catchbug
modules = sys.argv[2:]
loader = unittest.TestLoader()
tests = []
def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            flatten(t)
        else:
            tests.append(t)
for name in modules:
    flatten(loader.loadTestsFromName("test." + name))
bug = getattr(catchbug, sys.argv[1])
tests.insert(len(tests) // 2, unittest.FunctionTestCase(lambda: bug()))
print("tests", len(tests), flush=True)
result = unittest.TextTestRunner(stream=open("/dev/null", "w"), verbosity=0).run(
    unittest.TestSuite(tests))
print("failures", len(result.failures), "errors", len(result.errors), flush=True)
"""

# Modules of Lib/test that run in-process, quickly, without network or resources.
CPYTHON_MODULES = [
    "test_list", "test_dict", "test_set", "test_json", "test_re", "test_string",
    "test_bytes", "test_tuple", "test_int", "test_float", "test_bisect", "test_heapq",
    "test_collections", "test_itertools", "test_functools", "test_operator", "test_enum",
    "test_textwrap", "test_difflib", "test_statistics", "test_fractions", "test_decimal",
    "test_base64", "test_binascii", "test_struct", "test_array", "test_deque",
    "test_ordered_dict", "test_contains", "test_sort", "test_strtod", "test_long",
]

SERVICE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Start-up: long-lived objects from a few sites. */
static __attribute__((noinline)) void *config_entry(size_t n) { return malloc(n); }
static __attribute__((noinline)) void *cache_line(size_t n) { return malloc(n); }
static __attribute__((noinline)) void *session(size_t n) { return malloc(n); }

/* Requests: short-lived objects. */
static __attribute__((noinline)) void request(unsigned i)
{
	char *volatile a = malloc(32 + i % 200), *volatile b = malloc(64);
	a[0] = b[0] = (char)i;
	free(a);
	free(b);
}

static __attribute__((noinline)) void new_site_overflow(void)
{
	volatile char *p = malloc(16);
	for (int i = 0; i <= 16; i++)
		p[i] = (char)i;
	free((void *)p);
}

static __attribute__((noinline)) int new_site_uaf(void)
{
	volatile char *p = malloc(16);
	p[0] = 1;
	free((void *)p);
	return p[0];
}

int main(int argc, char **argv)
{
	long objects = atol(argv[2]);
	double seconds = atof(argv[3]);
	void **keep = calloc(objects, sizeof(void *));
	for (long i = 0; i < objects; i++)
		keep[i] = i % 3 == 0 ? config_entry(24) : i % 3 == 1 ? cache_line(64) : session(128);
	double end = now() + seconds;
	unsigned long n = 0;
	while (now() < end)
		for (int k = 0; k < 1000; k++)
			request((unsigned)n++);
	if (!strcmp(argv[1], "overflow"))
		new_site_overflow();
	else
		printf("%d\n", new_site_uaf());
	printf("requests %lu\n", n);
	for (long i = 0; i < objects; i++)
		free(keep[i]);
	free(keep);
	return 0;
}
"""

PACKAGE = "simplejson==3.19.3"
PACKAGE_TEST = """
import catchbug


def test_calls_the_bug_once():
    catchbug.{bug}()
"""

BUG_FUNCTIONS = {"overflow": ("overflow", "new_site_overflow"), "uaf": ("uaf", "new_site_uaf")}
MODES = {"coverage": [], "no-coverage": ["--skip-covered-thresh", "100"]}


def build(work: Path) -> tuple[Path, Path]:
    """The catchbug extension (in work/) and the service program."""
    cc = os.environ.get("CC", "cc")
    ext = work / f"catchbug{sysconfig.get_config_var('EXT_SUFFIX')}"
    (work / "catchbug.c").write_text(EXTENSION)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-g", f"-I{sysconfig.get_paths()['include']}",
                    str(work / "catchbug.c"), "-o", str(ext)], check=True)
    service = work / "service"
    (work / "service.c").write_text(SERVICE)
    subprocess.run([cc, "-O1", "-g", str(work / "service.c"), "-o", str(service)], check=True)
    (work / "runner.py").write_text(RUNNER)
    return ext, service


def build_package(work: Path) -> Path:
    """The package's sdist, built in place with debug info; its source directory."""
    name, version = PACKAGE.split("==")
    src = sdist.unpack(sdist.download_sdist(name, version, work), work)
    sdist.build_inplace(src, cflags="-g -O2")
    return src


def kfence_run(argv: list[str], mode: str, jsonl: Path, cwd: Path, env: dict[str, str]
               ) -> tuple[float, subprocess.CompletedProcess[str]]:
    cmd = [sys.executable, "-m", "kfence_py", "run", "--sample-rate", "1", "--no-symbolize",
           "--json-reports", str(jsonl), *MODES[mode], "--", *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc


def caught(jsonl: Path, function: str) -> bool:
    if not jsonl.exists():
        return False
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        if function in (record.get("function") or ""):
            return True
    return False


def scenario_argv(name: str, bug: str, work: Path, args: argparse.Namespace) -> list[str]:
    if name == "cpython":
        return [sys.executable, str(work / "runner.py"), BUG_FUNCTIONS[bug][0], *CPYTHON_MODULES]
    if name == "package":
        src = next(p for p in work.glob("simplejson-*") if p.is_dir())
        # Named to run in the middle of the suite (pytest runs files in name order).
        (src / "simplejson" / "tests" / "test_m_catchbug.py").write_text(
            PACKAGE_TEST.format(bug=BUG_FUNCTIONS[bug][0]))
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                str(src / "simplejson" / "tests")]
    return [str(work / "service"), bug, str(args.objects), str(args.seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="service churn time")
    parser.add_argument("--objects", type=int, default=20000, help="service start-up objects")
    parser.add_argument("--scenarios", default="cpython,package,service")
    parser.add_argument("--bugs", default="overflow,uaf")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="coverage (the default options), no-coverage, or both")
    parser.add_argument("--output", type=Path, default=RESULTS, help="raw results (JSON)")
    args = parser.parse_args()
    snap = machine.snapshot(machine.package_source())
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="kfence-catch-") as tmp:
        work = Path(tmp)
        build(work)
        if "package" in args.scenarios:
            build_package(work)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(work), *map(str, work.glob("simplejson-*/")),
                          os.environ.get("PYTHONPATH", "")]))}
        for name in args.scenarios.split(","):
            for bug in args.bugs.split(","):
                argv = scenario_argv(name, bug, work, args)
                plain_time, tests = float("nan"), "-"
                if name != "service":  # the service runs for a fixed time: no plain run
                    start = time.perf_counter()
                    plain = subprocess.run(argv, cwd=work, env=env, capture_output=True,
                                           text=True, check=False)
                    plain_time = time.perf_counter() - start
                    tests = next((ln.split()[1] for ln in plain.stdout.splitlines()
                                  if ln.startswith("tests ")),
                                 next((ln.split()[0] for ln in plain.stdout.splitlines()
                                       if " passed" in ln), "-"))
                for mode in args.modes.split(","):
                    hits, times = 0, []
                    for i in range(args.runs):
                        jsonl = work / f"{name}-{bug}-{mode}-{i}.jsonl"
                        took, proc = kfence_run(argv, mode, jsonl, work, env)
                        times.append(took)
                        hit = caught(jsonl, BUG_FUNCTIONS[bug][name == "service"])
                        hits += hit
                        raw.append({"scenario": name, "bug": bug, "mode": mode, "run": i,
                                    "caught": hit, "seconds": took, "plain_seconds": plain_time,
                                    "status": proc.returncode,
                                    "summary": [ln for ln in proc.stderr.splitlines()
                                                if ln.startswith("kfence-py: ")]})
                        print(f"{name} {bug} {mode} run {i}: caught={hit} {took:.1f}s",
                              file=sys.stderr, flush=True)
                    median = statistics.median(times)
                    cost = (f"{median / plain_time:.2f}x" if name != "service"
                            else f"{median:.0f} s (fixed duration)")
                    rows.append(f"| {name} | {tests} | {bug} | {mode} | {hits}/{args.runs} "
                                f"| {cost} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": snap.as_dict(), "args": {**vars(args), "output": str(args.output)},
              "runs": raw}
    args.output.write_text(json.dumps(record, indent=1))
    print("\n".join(machine.header(snap)))
    print("| scenario | tests | bug | mode | caught | wall time vs plain (median) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
