"""Field trial: real packages' own test suites under kfence_py, plain and sampled.

For each package of bench/field/packages.toml (a pinned PyPI sdist with C or
C++ code and its tests), the trial downloads the sdist, builds it with debug
info (``-g`` after the package's own flags) in a virtual environment of its own
(``--system-site-packages``: kfence_py and pytest of this Python are seen), and
runs its tests three times, each with ``--junitxml`` so that every test id's
outcome is known:

* ``plain``: ``python -m pytest ...``;
* ``run``: the test-suite mode, ``kfence-py run --sample-rate 1 --json-reports
  R.jsonl -- python -m pytest ...`` (malloc of every process guarded while the
  pool has room, check_free and sweep_at_exit on);
* ``plugin``: CPython's allocator sampled in every test by the pytest plugin,
  ``python -m pytest --kfence`` (its default options), with ``state_dir`` added so
  that the reports and counters can be read after the run.

One more entry, ``cpython``, runs a slice of CPython's own regression suite
(``python -m test``, in-process, no resources) the same three ways; its third
mode is a small runner that starts the library with the plugin's options and
samples CPython's allocator inside each unittest test (``kfence_py.sampling()``
around ``TestCase.run``), as the plugin does inside each pytest test.

Per package and mode it records the tests passed / failed / skipped / errors, the
test ids whose outcome differs from the plain run (rerun once, both ways, to tell
a flaky test from one the mode changed), the wall time and its ratio to plain,
the guarded allocations, the distinct allocation sites among the pool's slots at
exit, the reports (their JSON records) and the unique ones by bucket.  Results go
to bench/field/results.json and the table to bench/field/results.md; verdicts on
reports (true bug or false report) are read from bench/field/triage.toml.

    python bench/field.py --setup                  # once: the Debian packages the builds need
    taskset -c 1 nice -n 10 python bench/field.py --quick
    python bench/field.py --only simplejson msgpack
    python bench/field.py --render                 # results.md again from results.json
    python bench/field.py --summary                # the short table for README
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import machine
import sdist
import tomllib

log = logging.getLogger("field")

HERE = Path(__file__).resolve().parent
FIELD = HERE / "field"
PACKAGES = FIELD / "packages.toml"
TRIAGE = FIELD / "triage.toml"
RESULTS = FIELD / "results.json"
TABLE = FIELD / "results.md"
README = HERE.parent / "README.md"
SUMMARY_BEGIN, SUMMARY_END = "<!-- field-summary:begin -->", "<!-- field-summary:end -->"
DEFAULT_WORK = HERE / "results" / "field-work"
CHECKOUT = HERE.parent / "kfence_py"

MODES = ("plain", "run", "plugin")
OUTCOMES = ("passed", "failed", "skipped", "error")
# The test-suite mode as README recommends it for test suites.
RUN_OPTIONS = ["--sample-rate", "1"]
# The plugin's default options (README "pytest plugin"), and a state directory to read.
PLUGIN_OPTIONS = "sample_rate=1:num_objects=4096"
CPYTHON = "cpython"  # the entry of CPython's regression suite

# A runner for CPython's allocator sampling under regrtest (which has no pytest): the
# library starts with the plugin's options, and CPython's allocator is sampled inside each
# unittest test, as the plugin samples inside each pytest test.  Sampling the whole run
# instead filled the 4096 slots with the objects of the imports and regrtest's own, which
# live to the end: 154M allocations were skipped for capacity and 223k guarded.
REGRTEST_SAMPLED = """\
import unittest
import kfence_py
kfence_py.enable(**{options})
_run = unittest.TestCase.run
def run(self, result=None):
    with kfence_py.sampling(python_allocator=True):
        return _run(self, result)
unittest.TestCase.run = run
from test.libregrtest.main import main
main()
"""


# === The package list ===

@dataclass(frozen=True)
class Package:
    """One entry of packages.toml (its format: /tmp/kf/field-format.md, kept in the file)."""

    name: str
    version: str
    kind: str
    tests: list[str]
    apt: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    build: str = "inplace"  # or "install"
    skip: list[str] = field(default_factory=list)
    quick: bool = False
    seconds: float | None = None
    tests_count: int | None = None
    build_seconds: float | None = None  # measured, informational
    # cpython only: regrtest's test modules
    modules: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def load_packages(path: Path = PACKAGES) -> list[Package]:
    doc = tomllib.loads(path.read_text())
    known = set(Package.__dataclass_fields__)
    out = []
    for entry in doc.get("package", []):
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{path}: {entry.get('name')}: unknown keys {sorted(unknown)}")
        if entry.get("build", "inplace") not in ("inplace", "install", "none"):
            raise ValueError(f"{path}: {entry['name']}: build is inplace, install or none")
        out.append(Package(**entry))
    names = [p.name for p in out]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"{path}: packages listed twice: {dup}")
    return out


def load_triage(path: Path = TRIAGE) -> dict[str, dict[str, str]]:
    """Verdicts by report bucket: {"verdict": "true"|"false", "note": ...}."""
    if not path.exists():
        return {}
    doc = tomllib.loads(path.read_text())
    out = {}
    for bucket, entry in doc.get("bucket", {}).items():
        if entry.get("verdict") not in ("true", "false"):
            raise ValueError(f"{path}: bucket {bucket}: verdict is 'true' or 'false'")
        out[bucket] = {"verdict": entry["verdict"], "note": entry.get("note", "")}
    return out


def package_blocks(text: str) -> list[tuple[str, str]]:
    """Each ``[[package]]`` entry of a package list as (name, its text with comments)."""
    blocks = []
    parts = re.split(r"(?m)^(?=\[\[package\]\])", text)
    for part in parts[1:]:
        # Comment lines after the entry's last key introduce the next entry: left out.
        lines = part.rstrip().splitlines()
        while lines and lines[-1].lstrip().startswith("#"):
            lines.pop()
        body = "\n".join(lines) + "\n"
        blocks.append((tomllib.loads(body)["package"][0]["name"], body))
    return blocks


def merge_candidates(listing: str, candidates: str, before: str = f'name = "{CPYTHON}"') -> str:
    """listing with the candidates' entries it lacks (by name), as written there, put
    before the entry holding ``before`` (CPython's, kept last)."""
    have = {name for name, _ in package_blocks(listing)}
    new = [body for name, body in package_blocks(candidates) if name not in have]
    if not new:
        return listing
    at = listing.find(before)
    at = listing.rfind("[[package]]", 0, at) if at >= 0 else len(listing)
    # Keep the comment lines just above the entry with it.
    head = listing[:at].rstrip("\n").split("\n")
    tail_comments = []
    while head and head[-1].startswith("#"):
        tail_comments.insert(0, head.pop())
    text = "\n".join(head).rstrip("\n") + "\n\n" + "\n".join(new)
    return text + "\n" + "\n".join([*tail_comments, listing[at:]]).lstrip("\n")


# === JUnit XML: every test id's outcome ===

def junit_outcomes(path: Path) -> dict[str, str]:
    """Each test id of a JUnit XML file (pytest's or regrtest's) and its outcome.

    The id is ``classname::name`` (pytest) or the name alone (regrtest, whose
    names are unittest ids).  A test listed twice (pytest adds a teardown error
    to a test that passed or failed) keeps its worst outcome: error, failed,
    skipped, passed.
    """
    root = ET.parse(path).getroot()
    rank = {o: i for i, o in enumerate(("passed", "skipped", "failed", "error"))}
    out: dict[str, str] = {}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        classname = case.get("classname")
        test_id = f"{classname}::{name}" if classname else name
        outcome = "passed"
        for child in case:
            if child.tag == "error":
                outcome = "error"
            elif child.tag == "failure" and outcome != "error":
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        old = out.get(test_id)
        if old is None or rank[outcome] > rank[old]:
            out[test_id] = outcome
    return out


def junit_node_ids(path: Path) -> dict[str, str]:
    """pytest node ids by test id, from a JUnit XML file in the xunit1 family
    (``-o junit_family=xunit1`` adds each test's file): for a rerun of some tests."""
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        name, classname, file = case.get("name", ""), case.get("classname"), case.get("file")
        if not classname or not file:
            continue
        module = file.removesuffix(".py").replace("/", ".")
        rest = classname.removeprefix(module).lstrip(".")
        parts = [file, *filter(None, rest.split(".")), name] if classname.startswith(
            module) else [file, name]
        out[f"{classname}::{name}"] = "::".join(parts)
    return out


def junit_failure_texts(path: Path, marker: str = "kfence_py reported") -> dict[str, str]:
    """The failure or error text of each test whose text holds marker (the plugin's)."""
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        for child in case:
            text = (child.get("message") or "") + "\n" + (child.text or "")
            if child.tag in ("failure", "error") and marker in text:
                classname = case.get("classname")
                name = case.get("name", "")
                out[f"{classname}::{name}" if classname else name] = text.strip()
    return out


def count_outcomes(outcomes: dict[str, str]) -> dict[str, int]:
    counted = Counter(outcomes.values())
    return {o: counted.get(o, 0) for o in OUTCOMES}


def per_module(outcomes: dict[str, str]) -> dict[str, dict[str, int]]:
    """regrtest's outcomes counted by test module (``test.test_x....`` ids)."""
    by: dict[str, dict[str, str]] = {}
    for test_id, outcome in outcomes.items():
        parts = test_id.split(".")
        module = parts[1] if len(parts) > 1 and parts[0] == "test" else parts[0]
        by.setdefault(module, {})[test_id] = outcome
    return {m: count_outcomes(o) for m, o in sorted(by.items())}


def differences(plain: dict[str, str], other: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Test ids whose outcome is not the same in both: {id: (plain's, other's)};
    a test run by one only is "absent" in the other."""
    return {t: (plain.get(t, "absent"), other.get(t, "absent"))
            for t in sorted(set(plain) | set(other))
            if plain.get(t, "absent") != other.get(t, "absent")}


def classify(first: tuple[str, str], rerun: tuple[str | None, str | None]) -> str:
    """What a difference is, after one rerun of the test in both modes.

    ``flaky``: a rerun gave the other side's outcome, or the two reruns agree;
    ``persistent``: the reruns still differ the same way (kfence_py suspected);
    ``unknown``: no rerun could be made.
    """
    plain, mode = first
    plain2, mode2 = rerun
    if plain2 is None or mode2 is None:
        return "unknown"
    if plain2 in (mode2, mode) or mode2 == plain:
        return "flaky"
    return "persistent"


# === What the library saw: state files ===

@dataclass
class Seen:
    """Counters over the state files of one run's processes."""

    processes: int = 0
    guarded: int = 0
    bugs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sites: int = 0


def read_state_dir(state_dir: Path) -> Seen:
    """Processes, guarded allocations, bugs, skipped allocations and allocation sites.

    A site is the first frame of an allocation stack outside kfence_py (the
    return address into the code that called the allocator, as the library's
    covered-site filter has it), as module+offset so that processes add up.  Only
    the last object of each pool slot is in the state: the count is a lower bound
    of the sites guarded over the run.
    """
    import kfence_py
    from kfence_py.state import StateError, StateView

    package = Path(kfence_py.__file__).parent
    own = (str(package), str(package.resolve()))
    seen = Seen()
    skipped: Counter[str] = Counter()
    sites: set[tuple[str, int]] = set()
    for path in sorted(state_dir.glob("*.state")):
        try:
            view = StateView.open(path)
            stats = view.stats()
            objects = view.objects()
            table = view.module_table()
        except (OSError, StateError) as exc:
            log.warning("%s: %s", path, exc)
            continue
        seen.processes += 1
        seen.guarded += stats.total_allocations
        seen.bugs += stats.total_bugs
        skipped.update({k: v for k, v in stats.skipped.items() if v})
        for obj in objects:
            for pc in obj.alloc_stack:
                module = table.module_at(pc)
                if module is not None and module.path.startswith(own):
                    continue
                sites.add((module.path, module.offset(pc)) if module else ("?", pc))
                break
    seen.skipped = dict(skipped)
    seen.sites = len(sites)
    return seen


def group_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reports by bucket, most frequent first, as ``kfence-py reports --group`` counts them."""
    groups: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = rec.get("bucket") or "?"
        g = groups.setdefault(key, {"bucket": key, "kind": rec.get("kind"),
                                    "access": rec.get("access"),
                                    "function": rec.get("function"), "count": 0,
                                    "processes": set()})
        g["count"] += 1 + int(rec.get("repeats") or 0)
        g["processes"].add(rec.get("pid"))
    out = sorted(groups.values(), key=lambda g: (-g["count"], g["bucket"]))
    for g in out:
        g["processes"] = len(g["processes"])
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# === Running ===

@dataclass
class ModeResult:
    mode: str
    status: int | None = None
    seconds: float = 0.0
    ratio: float | None = None  # seconds / plain's
    counts: dict[str, int] = field(default_factory=dict)
    tests_run: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    processes: int = 0
    guarded: int = 0
    bugs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sites: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    failure_texts: dict[str, str] = field(default_factory=dict)  # plugin: junit text
    summary: list[str] = field(default_factory=list)  # kfence-py run's closing lines
    per_module: dict[str, dict[str, int]] = field(default_factory=dict)  # cpython's
    error: str | None = None  # the run made no results (timeout, no junit file)


@dataclass
class PackageResult:
    name: str
    version: str
    kind: str
    build_seconds: float = 0.0
    build_error: str | None = None
    modes: dict[str, ModeResult] = field(default_factory=dict)


@dataclass
class Trial:
    """Where one package is built and run."""

    package: Package
    work: Path
    timeout: float

    @property
    def root(self) -> Path:
        return self.work / self.package.key

    @property
    def python(self) -> str:
        if self.package.name == CPYTHON:
            return sys.executable
        return str(self.root / "venv" / "bin" / "python")

    src: Path = field(init=False)

    def __post_init__(self) -> None:
        self.src = self.root

    def prepare(self, rebuild: bool) -> None:
        """Download, unpack, make the venv, install deps, build: skipped when done before."""
        pkg = self.package
        if pkg.name == CPYTHON:
            self.src = self.root
            self.root.mkdir(parents=True, exist_ok=True)
            return
        done = self.root / "built"
        if rebuild and self.root.exists():
            shutil.rmtree(self.root)
        if done.exists():
            self.src = Path(done.read_text().strip())
            return
        self.root.mkdir(parents=True, exist_ok=True)
        archive = sdist.download_sdist(pkg.name, pkg.version, self.work / "sdists")
        unpacked = self.root / "src"
        if unpacked.exists():
            shutil.rmtree(unpacked)
        self.src = sdist.unpack(archive, unpacked)
        venv = self.root / "venv"
        if not venv.exists():
            _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
        if pkg.deps:
            _run([self.python, "-m", "pip", "install", "-q", *pkg.deps])
        if pkg.build == "inplace":
            sdist.build_inplace(self.src, self.python)
        elif pkg.build == "install":
            sdist.build_install(self.src, self.python)
        done.write_text(str(self.src))

    # --- the commands ---

    def pytest_argv(self, junit: Path, extra: Iterable[str] = (), ids: Iterable[str] = ()
                    ) -> list[str]:
        pkg = self.package
        # -P: the source directory is not put first on sys.path by ``python -m``
        # (an installed package would be shadowed by its unbuilt sources).
        python = [self.python, "-P"] if pkg.build == "install" else [self.python]
        ids = list(ids)
        targets = ids or pkg.tests
        return [*python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o",
                "junit_family=xunit1", f"--junitxml={junit}", *extra, *targets,
                *(f"--deselect={s}" for s in pkg.skip)]

    def regrtest_argv(self, junit: Path, runner: Path | None = None,
                      ids: Iterable[str] = ()) -> list[str]:
        modules = sorted({i.split(".")[1] for i in ids}) if ids else self.package.modules
        head = [self.python, str(runner)] if runner else [self.python, "-m", "test"]
        argv = [*head, "--junit-xml", str(junit), *modules]
        if ids:
            argv += [f"--match={i}" for i in ids]
        return argv

    def command(self, mode: str, out: Path, ids: Iterable[str] = ()) -> list[str]:
        """The command of one mode, writing its files under out."""
        junit = out / "junit.xml"
        state = out / "state"
        cpython = self.package.name == CPYTHON
        if mode == "plain":
            return (self.regrtest_argv(junit, ids=ids) if cpython
                    else self.pytest_argv(junit, ids=ids))
        if mode == "run":
            inner = (self.regrtest_argv(junit, ids=ids) if cpython
                     else self.pytest_argv(junit, ids=ids))
            return [self.python, "-m", "kfence_py", "run", *RUN_OPTIONS, "--state-dir",
                    str(state), "--keep-clean", "1000000", "--json-reports",
                    str(out / "reports.jsonl"), "--", *inner]
        options = f"{PLUGIN_OPTIONS}:state_dir={state}"
        if cpython:
            runner = out / "sampled.py"
            pairs = dict(item.split("=", 1) for item in options.split(":"))
            runner.write_text(REGRTEST_SAMPLED.format(options=repr(pairs)))
            return self.regrtest_argv(junit, runner=runner, ids=ids)
        return self.pytest_argv(junit, ["--kfence", "--kfence-options", options], ids)

    def execute(self, mode: str, out: Path, ids: Iterable[str] = ()
                ) -> tuple[int | None, float, str]:
        """Run a mode; its status (None on timeout), wall time and stderr's tail."""
        if out.exists():
            shutil.rmtree(out)
        (out / "state").mkdir(parents=True, mode=0o700)
        os.chmod(out / "state", 0o700)
        argv = self.command(mode, out, ids)
        (out / "command").write_text(" ".join(argv) + "\n")
        env = {**os.environ}
        env.pop("KFENCE_OPTIONS", None)
        env.pop("PYTEST_KFENCE", None)
        env.pop("PYTEST_ADDOPTS", None)
        start = time.perf_counter()
        with open(out / "stdout", "w") as so, open(out / "stderr", "w") as se:
            try:
                proc = subprocess.run(argv, cwd=self.src, env=env, stdout=so, stderr=se,
                                      stdin=subprocess.DEVNULL, timeout=self.timeout,
                                      check=False)
                status: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                status = None
        took = time.perf_counter() - start
        return status, took, (out / "stderr").read_text(errors="replace")

    def run_mode(self, mode: str, out: Path) -> ModeResult:
        status, took, stderr = self.execute(mode, out)
        result = ModeResult(mode=mode, status=status, seconds=round(took, 2))
        if status is None:
            result.error = f"timed out after {self.timeout:.0f} s"
        junit = out / "junit.xml"
        if not junit.exists():
            result.error = result.error or f"no JUnit file (exit status {status})"
            return result
        outcomes = junit_outcomes(junit)
        result.counts = count_outcomes(outcomes)
        result.tests_run = len(outcomes)
        (out / "outcomes.json").write_text(json.dumps(outcomes, indent=0))
        if self.package.name == CPYTHON:
            result.per_module = per_module(outcomes)
        if mode == "plain":
            return result
        result.summary = [ln for ln in stderr.splitlines() if ln.startswith("kfence-py: ")]
        seen = read_state_dir(out / "state")
        result.processes, result.guarded, result.bugs = seen.processes, seen.guarded, seen.bugs
        result.skipped, result.sites = seen.skipped, seen.sites
        jsonl = out / "reports.jsonl"
        if mode != "run":  # the plugin's reports are read from the state it left
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in state_reports(
                out / "state", self.python)))
        result.reports = read_jsonl(jsonl)
        result.groups = group_records(result.reports)
        result.failure_texts = junit_failure_texts(junit)
        return result

    def compare(self, plain_out: Path, result: ModeResult, out: Path) -> None:
        """The tests whose outcome differs from plain's, each rerun once both ways."""
        plain = json.loads((plain_out / "outcomes.json").read_text())
        other = json.loads((out / "outcomes.json").read_text())
        diff = differences(plain, other)
        if not diff:
            return
        reruns: dict[str, dict[str, str]] = {}
        ids = self.rerun_ids(plain_out / "junit.xml", list(diff))
        if ids:
            for mode in ("plain", result.mode):
                rerun_out = out / f"rerun-{mode}"
                self.execute(mode, rerun_out, ids.values())
                junit = rerun_out / "junit.xml"
                reruns[mode] = junit_outcomes(junit) if junit.exists() else {}
        for test_id, (was, now) in diff.items():
            again = (reruns.get("plain", {}).get(test_id) if test_id in ids else None,
                     reruns.get(result.mode, {}).get(test_id) if test_id in ids else None)
            result.differences.append({
                "id": test_id, "plain": was, result.mode: now,
                "rerun": {"plain": again[0], result.mode: again[1]},
                "verdict": classify((was, now), again),
                "report_in_failure": test_id in result.failure_texts})

    def rerun_ids(self, junit: Path, test_ids: list[str]) -> dict[str, str]:
        """What to pass to rerun each test id: a pytest node id, or regrtest's id."""
        if self.package.name == CPYTHON:
            return {t: t for t in test_ids if t.startswith("test.")}
        if not junit.exists():
            return {}
        nodes = junit_node_ids(junit)
        return {t: nodes[t] for t in test_ids if t in nodes}


def state_reports(state_dir: Path, python: str) -> list[dict[str, Any]]:
    """The JSON records of the reports in a state directory (``kfence-py reports --json``)."""
    proc = subprocess.run([python, "-m", "kfence_py", "reports", "--state-dir", str(state_dir),
                           "--json"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.warning("kfence-py reports --state-dir %s: %s", state_dir, proc.stderr.strip())
        return []
    return list(json.loads(proc.stdout).get("reports", []))


def use_checkout(work: Path) -> Path | None:
    """Have this process and every child import this checkout's kfence_py, if it is built.

    A directory holding only a link to the checkout's package goes first on
    PYTHONPATH (the checkout's root would also put its tests/ and bench/ before the
    packages' own). An unbuilt checkout (no libkfence.so) leaves the installed one.
    """
    if not (CHECKOUT / "libkfence.so").exists():
        log.warning("%s is not built (python setup.py build_ext --inplace): the installed "
                    "kfence_py is tried", CHECKOUT)
        return None
    link_dir = work / "kfence-path"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "kfence_py"
    if not link.is_symlink() or link.resolve() != CHECKOUT.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(CHECKOUT.resolve())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(link_dir), os.environ.get("PYTHONPATH", "")]))
    sys.path.insert(0, str(link_dir))
    return link_dir


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def trial_package(pkg: Package, work: Path, modes: list[str], rebuild: bool,
                  timeout: float) -> PackageResult:
    result = PackageResult(pkg.name, pkg.version, pkg.kind)
    trial = Trial(pkg, work, timeout)
    start = time.perf_counter()
    try:
        trial.prepare(rebuild)
    except subprocess.CalledProcessError as exc:
        result.build_error = _tail(f"{' '.join(map(str, exc.cmd))}: exit {exc.returncode}\n"
                                   f"{exc.stdout or ''}{exc.stderr or ''}")
        log.error("%s: build failed: %s", pkg.key, result.build_error)
        return result
    except (OSError, ValueError) as exc:
        result.build_error = str(exc)
        log.error("%s: build failed: %s", pkg.key, exc)
        return result
    result.build_seconds = round(time.perf_counter() - start, 1)
    runs = trial.root / "runs"
    for mode in modes:
        log.info("%s: %s ...", pkg.key, mode)
        out = runs / mode
        res = trial.run_mode(mode, out)
        plain = result.modes.get("plain")
        if mode != "plain" and plain is not None and plain.error is None:
            if plain.seconds:
                res.ratio = round(res.seconds / plain.seconds, 2)
            if res.error is None:
                trial.compare(runs / "plain", res, out)
        result.modes[mode] = res
        log.info("%s: %s: %s in %.1f s%s%s", pkg.key, mode, res.counts, res.seconds,
                 f", {res.guarded} guarded, {len(res.groups)} unique report(s)"
                 if mode != "plain" else "",
                 f", {len(res.differences)} difference(s)" if res.differences else "")
        if res.error:
            log.warning("%s: %s: %s", pkg.key, mode, res.error)
    return result


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# === Machine, results file ===

def machine_info() -> dict[str, Any]:
    """The machine and the kfence_py tree measured, as every results file records them."""
    return machine.snapshot(machine.package_source()).as_dict()


def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return dict(json.loads(path.read_text()))
    return {"machine": {}, "packages": []}


def merge_results(doc: dict[str, Any], new: list[PackageResult]) -> dict[str, Any]:
    """doc with new's packages in place of those of the same name (an --only run)."""
    fresh = {r.name: asdict(r) for r in new}
    old = [p for p in doc.get("packages", []) if p["name"] not in fresh]
    return {**doc, "packages": [*old, *fresh.values()]}


# === Tables ===

def verdicts(groups: Iterable[dict[str, Any]], triage: dict[str, dict[str, str]]
             ) -> Counter[str]:
    out: Counter[str] = Counter()
    for g in groups:
        out[triage.get(g["bucket"], {}).get("verdict", "untriaged")] += 1
    return out


def _fmt_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return "/".join(str(counts.get(o, 0)) for o in OUTCOMES)


def _fmt_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in
                     sorted(skipped.items(), key=lambda kv: -kv[1]) if n) or "0"


def _ratio(mode: dict[str, Any] | None) -> str:
    if not mode or mode.get("ratio") is None:
        return "-"
    return f"{mode['ratio']:.2f}x"


def render_table(doc: dict[str, Any], triage: dict[str, dict[str, str]]) -> str:
    """The full table (markdown): a row per package and mode, then every unique report."""
    m = doc.get("machine", {})
    lines = ["# Field trial results", "",
             "Generated by `python bench/field.py` (do not edit: `--render` writes it again "
             "from results.json).", "",
             *machine.header(machine.from_dict(m)),
             "Tests: passed/failed/skipped/errors (pytest's JUnit XML; regrtest's for cpython). "
             "`plain`: the tests alone; `run`: `kfence-py run --sample-rate 1` (the test-suite "
             "mode); `plugin`: CPython's allocator sampled in every test (`pytest --kfence`; "
             "for cpython, `kfence_py.sampling()` around each unittest test under "
             "regrtest). Differences: tests whose outcome is not plain's (flaky: a rerun "
             "gave the other outcome). Sites: distinct allocation call sites among the pool "
             "slots' last objects at exit (a lower bound). Skipped allocations: not guarded, by "
             "reason (covered: its site already had a live guarded object once the pool was "
             "75% full; capacity: the pool was full; too large: over a page).", "",
             "| package | kind | mode | tests p/f/s/e | differences | wall s | vs plain "
             "| processes | guarded allocations | skipped allocations | sites "
             "| unique reports |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pkg in sorted(doc.get("packages", []), key=lambda p: p["name"]):
        label = f"{pkg['name']} {pkg['version']}"
        if pkg.get("build_error"):
            lines.append(f"| {label} | {pkg['kind']} | build failed | - | - | - | - | - | - "
                         "| - | - | - |")
            continue
        for mode in MODES:
            r = pkg["modes"].get(mode)
            if r is None:
                continue
            if r.get("error") and not r.get("counts"):
                lines.append(f"| {label} | {pkg['kind']} | {mode} | {r['error']} | - | "
                             f"{r['seconds']:.1f} | - | - | - | - | - | - |")
                continue
            diffs = r.get("differences", [])
            dtext = "-" if mode == "plain" else str(len(diffs)) + (
                " (" + ", ".join(f"{n} {v}" for v, n in Counter(
                    d["verdict"] for d in diffs).items()) + ")" if diffs else "")
            own = mode == "plain"
            lines.append(
                f"| {label} | {pkg['kind']} | {mode} | {_fmt_counts(r['counts'])} | {dtext} "
                f"| {r['seconds']:.1f} | {_ratio(r) if not own else '1.00x'} "
                f"| {'-' if own else r['processes']} | {'-' if own else r['guarded']} "
                f"| {'-' if own else _fmt_skipped(r.get('skipped', {}))} "
                f"| {'-' if own else r['sites']} | {'-' if own else len(r['groups'])} |")
    lines += ["", "## Reports", ""]
    rows = report_rows(doc, triage)
    if not rows:
        lines.append("No report in any mode.")
    else:
        lines += ["| package | mode | kind | function | bucket | times | verdict | note |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['package']} | {r['mode']} | {r['kind']} | {r['function']} "
                  f"| `{r['bucket']}` | {r['count']} | {r['verdict']} | {r['note']} |"
                  for r in rows]
    diffs = [(pkg["name"], mode, d) for pkg in doc.get("packages", [])
             for mode, r in pkg.get("modes", {}).items() for d in r.get("differences", [])]
    if diffs:
        lines += ["", "## Differences from the plain run", "",
                  "| package | mode | test | plain | mode's | rerun (plain, mode) | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {mode} | `{d['id']}` | {d['plain']} | {d[mode]} | "
                  f"{d['rerun']['plain']}, {d['rerun'][mode]} | {d['verdict']} |"
                  for name, mode, d in diffs]
    lines += ["", "## Summary", "", render_summary(doc, triage)]
    return "\n".join(lines) + "\n"


def report_rows(doc: dict[str, Any], triage: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for pkg in sorted(doc.get("packages", []), key=lambda p: p["name"]):
        for mode, r in pkg.get("modes", {}).items():
            for g in r.get("groups", []):
                t = triage.get(g["bucket"], {})
                kind = f"{g['kind']} {g['access']}" if g.get("access") else g["kind"]
                rows.append({"package": pkg["name"], "mode": mode, "kind": kind,
                             "function": g.get("function") or "?", "bucket": g["bucket"],
                             "count": g["count"], "verdict": t.get("verdict", "untriaged"),
                             "note": t.get("note", "")})
    return rows


def render_summary(doc: dict[str, Any], triage: dict[str, dict[str, str]]) -> str:
    """The short table for README: packages, tests run, guarded allocations, unique
    reports (true / false / untriaged), median cost of each sampled mode."""
    pkgs = [p for p in doc.get("packages", []) if not p.get("build_error")]
    rows = []
    for mode in ("run", "plugin"):
        ran = [p for p in pkgs if p["modes"].get(mode) and p["modes"][mode].get("counts")]
        tests = sum(p["modes"][mode]["tests_run"] for p in ran)
        guarded = sum(p["modes"][mode]["guarded"] for p in ran)
        buckets: dict[str, dict[str, Any]] = {}
        for p in ran:
            for g in p["modes"][mode]["groups"]:
                buckets.setdefault(g["bucket"], g)
        v = verdicts(buckets.values(), triage)
        ratios = [p["modes"][mode]["ratio"] for p in ran
                  if p["modes"][mode].get("ratio") is not None]
        cost = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        differ = sum(1 for p in ran for d in p["modes"][mode]["differences"]
                     if d["verdict"] != "flaky")
        name = {"run": "`kfence-py run --sample-rate 1`",
                "plugin": "CPython allocator (`pytest --kfence`)"}[mode]
        rows.append(f"| {name} | {len(ran)} | {tests} | {guarded} | {len(buckets)} "
                    f"| {v['true']} / {v['false']}"
                    + (f" ({v['untriaged']} untriaged)" if v["untriaged"] else "")
                    + f" | {differ} | {cost} |")
    return "\n".join(["| mode | packages | tests run | guarded allocations | unique reports "
                      "| true / false | outcomes not plain's | median cost (wall vs plain) |",
                      "|---|---|---|---|---|---|---|---|", *rows])


def with_summary(readme: str, summary: str) -> str:
    """README's text with the summary table between its two markers."""
    begin, end = readme.index(SUMMARY_BEGIN), readme.index(SUMMARY_END)
    return f"{readme[:begin]}{SUMMARY_BEGIN}\n{summary}\n{readme[end:]}"


# === Setup ===

def setup(packages: list[Package]) -> int:
    """apt-get install every package's apt list (and what building any sdist needs)."""
    wanted = sorted({"build-essential", "python3-dev", *(a for p in packages for a in p.apt)})
    missing = [p for p in wanted if subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True, text=True,
        check=False).stdout.strip() != "install ok installed"]
    if not missing:
        print("field setup: every Debian package is installed")
        return 0
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"field setup: installing {' '.join(missing)}")
    subprocess.run([*sudo, "apt-get", "update"], check=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    status = subprocess.run([*sudo, "apt-get", "install", "-y", "--no-install-recommends",
                             *missing], env=env, check=False).returncode
    return status


# === Main ===

def select(packages: list[Package], only: list[str] | None, quick: bool) -> list[Package]:
    if only:
        unknown = set(only) - {p.name for p in packages}
        if unknown:
            raise SystemExit(f"field: not in {PACKAGES.name}: {', '.join(sorted(unknown))}")
        return [p for p in packages if p.name in only]
    if quick:
        return [p for p in packages if p.quick]
    return packages


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="field: %(message)s", stream=sys.stderr)
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true",
                        help="apt-get install the Debian packages every build needs, then stop")
    parser.add_argument("--quick", action="store_true", help="only the packages marked quick")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these packages")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="plain, run, plugin (plain always runs first)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="sdists, venvs, builds and each run's files (default %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="build again what was built")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a mode's test run may take")
    parser.add_argument("--packages", type=Path, default=PACKAGES, help="the package list")
    parser.add_argument("--triage", type=Path, default=TRIAGE, help="verdicts by bucket")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results (JSON)")
    parser.add_argument("--table", type=Path, default=TABLE, help="the full table (markdown)")
    parser.add_argument("--merge", type=Path, metavar="FILE",
                        help="add the entries of another package list (vetted candidates) that "
                        "--packages lacks, as written there, then stop")
    parser.add_argument("--render", action="store_true",
                        help="write the table again from --output, run nothing")
    parser.add_argument("--summary", action="store_true",
                        help="print the short table (README's) from --output, run nothing")
    parser.add_argument("--readme", action="store_true",
                        help="with --summary: also write it into README.md between its markers")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    with _logging(args.verbose):
        packages = load_packages(args.packages)
        triage = load_triage(args.triage)
        if args.setup:
            return setup(packages)
        if args.merge:
            merged = merge_candidates(args.packages.read_text(), args.merge.read_text())
            args.packages.write_text(merged)
            load_packages(args.packages)
            return 0
        if args.render or args.summary:
            doc = load_results(args.output)
            if args.render:
                args.table.write_text(render_table(doc, triage))
            if args.summary:
                summary = render_summary(doc, triage)
                print(summary)
                if args.readme:
                    README.write_text(with_summary(README.read_text(), summary))
            return 0
        modes = ["plain", *(m for m in args.modes.split(",") if m != "plain")]
        bad = set(modes) - set(MODES)
        if bad:
            parser.error(f"unknown modes {sorted(bad)}: {', '.join(MODES)}")
        chosen = select(packages, args.only, args.quick)
        args.work.mkdir(parents=True, exist_ok=True)
        use_checkout(args.work.resolve())
        results = []
        for pkg in chosen:
            results.append(trial_package(pkg, args.work.resolve(), modes, args.rebuild,
                                         args.timeout))
            # Written after every package: a long trial stopped halfway keeps what it did.
            doc = merge_results(load_results(args.output), results)
            doc["machine"] = machine_info()
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(doc, indent=1) + "\n")
            args.table.write_text(render_table(doc, triage))
        doc = load_results(args.output)
        print(render_summary(doc, triage))
        for row in report_rows({"packages": [asdict(r) for r in results]}, triage):
            print(f"report: {row['package']} {row['mode']}: {row['kind']} in "
                  f"{row['function']} (bucket {row['bucket']}, {row['count']} time(s), "
                  f"{row['verdict']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
