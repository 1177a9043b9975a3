"""pytest plugin: run tests with CPython's allocator sampled, fail those with reports.

``pytest --kfence`` samples every test; ``@pytest.mark.kfence(sample_rate=1)``
one test, with options.  Where the setting comes from, first found wins: the
command line (``--kfence`` / ``--no-kfence``, ``--kfence-options``), the
environment (``PYTEST_KFENCE``, ``PYTEST_KFENCE_OPTIONS``, as pytest-timeout's
``PYTEST_TIMEOUT``), the ini file (``kfence``, ``kfence_options``, as
pytest-memray's ``memray``).

A report found after a test's phase (setup, call, teardown) goes in that
phase's report: as its failure when the phase passed, as a "kfence_py" section
beside the test's own failure when it failed.  The text is rendered by
render.py with the package's symbolizer (function, file:line, demangled), each
run of the interpreter's own frames shown as one line.  A bad option, a
misspelled marker option or a library that cannot start is a pytest usage
error (exit status 4), found before the first test runs.  The library is
started with ``exitcode=1``: a run in which a bug was reported exits with
pytest's "tests failed" status, not kfence's 66.

Works beside pytest's faulthandler plugin: ours is installed after it, so pool
faults reach us first and everything else still reaches faulthandler.
kfence_py's warnings (tracemalloc restarted, allocator hooked by another tool)
are repeated in a "kfence_py" section of the terminal summary, as pytest
captures logging per test.  Each pytest-xdist worker samples its own tests;
a usage error in a worker is raised again by the controller.  Nothing here
loads the native library until sampling or options are asked for.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from types import ModuleType

    from .options import OptionSpec
    from .state import ReportRecord
    from .symbolize import Symbolizer

ENV_FLAG = "PYTEST_KFENCE"
ENV_OPTIONS = "PYTEST_KFENCE_OPTIONS"
# A big pool: with sample_rate=1, long-lived objects of earlier tests keep their slots.
DEFAULT_OPTIONS = "sample_rate=1:num_objects=4096"
# The sanitizers' separators between key=value items.
# As pytest reads a bool ini value.
_TRUE = frozenset({"1", "y", "yes", "t", "true", "on"})
_FALSE = frozenset({"0", "n", "no", "f", "false", "off"})

log = logging.getLogger("kfence_py")


class _Warnings(logging.Handler):
    """Keeps the warnings of the kfence_py logger for the terminal summary."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _native(module: str) -> ModuleType:
    """A module of the package that needs the native library; a usage error without it."""
    import importlib

    try:
        return importlib.import_module(f"{__package__}.{module}")
    except (ImportError, OSError) as exc:
        raise pytest.UsageError(
            f"kfence_py's native library cannot be loaded ({exc}): build it with "
            "'pip install .' (or 'python setup.py build_ext --inplace' in a source tree), "
            "or run without --kfence") from None


def _normalize(specs: Mapping[str, OptionSpec], key: str, value: object, where: str) -> str:
    spec = specs.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, specs, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(specs)}"
        raise pytest.UsageError(f"{where}: unknown kfence_py option {key!r}; {hint}")
    try:
        return spec.normalize(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


def parse_options(text: str, where: str) -> dict[str, str]:
    """``key=value`` items (separated as in KFENCE_OPTIONS) checked by the library's validator."""
    module = _native("options")
    specs = module.option_specs()
    options = {}
    for item in module.split_options(text):  # the library's own tokenizer
        if item.status != module.lib.KFENCE_ITEM_OK:
            raise pytest.UsageError(f"{where}: {item.problem()}")
        options[item.key] = _normalize(specs, item.key, item.value, where)
    return options


def _ini_name(config: pytest.Config, name: str) -> str:
    return f"{name} in {config.inipath.name}" if config.inipath else name


def _every_test(config: pytest.Config) -> tuple[bool, str]:
    """Whether every test is sampled, and the setting that decided it."""
    flag = config.getoption("kfence")
    if flag is not None:
        return bool(flag), "--kfence" if flag else "--no-kfence"
    env = os.environ.get(ENV_FLAG, "").strip()
    if env:
        if env.lower() not in _TRUE | _FALSE:
            raise pytest.UsageError(f"{ENV_FLAG}={env!r}: expected 1 or 0 (true/false, on/off)")
        return env.lower() in _TRUE, ENV_FLAG
    return bool(config.getini("kfence")), _ini_name(config, "kfence")


def _options_text(config: pytest.Config) -> tuple[str, str, bool]:
    """The session's options text, where it came from, and whether it was given at all."""
    given = config.getoption("kfence_options")
    if given is not None:
        return given, "--kfence-options", True
    env = os.environ.get(ENV_OPTIONS)
    if env is not None and env.strip():
        return env, ENV_OPTIONS, True
    ini = config.getini("kfence_options")
    if ini:
        return str(ini), _ini_name(config, "kfence_options"), True
    return DEFAULT_OPTIONS, "the default options", False


@dataclass
class _Session:
    """The plugin's state in one pytest process (each xdist worker has its own)."""

    every_test: bool
    options_text: str
    options_from: str
    options: dict[str, str] | None = None  # parsed when first needed
    active: bool = False  # the library runs here and tests are watched for reports
    symbolizer: Symbolizer | None = None  # started at the first report
    warnings: _Warnings = field(default_factory=_Warnings)

    def session_options(self) -> dict[str, str]:
        if self.options is None:
            self.options = parse_options(self.options_text, self.options_from)
        return self.options

    def activate(self) -> None:
        """Start the library before the first test (or check the running one): a usage
        error if it cannot start, rather than an internal error in the first test."""
        api = _native("api")
        options: dict[str, object] = dict(self.session_options())
        started_here = not api.lib.kfence_is_initialized()
        if started_here:
            options.setdefault("exitcode", pytest.ExitCode.TESTS_FAILED.value)
        try:
            # Options fixed at start take effect here; a running (preloaded) library
            # warns once about those it keeps.  The block restores its settings.
            with api.sampling(python_allocator=False, **options):
                pass
        except api.KfenceError as exc:
            raise pytest.UsageError(f"{exc} (options from {self.options_from}: "
                                    f"{self.options_text!r})") from None
        # Left on between tests: a thread that finds sampling off waits up to 65536
        # allocations before it looks again, and would miss the next test's bugs.
        self.active = True

    def render(self, records: list[ReportRecord]) -> str:
        from .render import own_reports_text
        from .symbolize import Symbolizer

        if self.symbolizer is None:
            self.symbolizer = Symbolizer()
        return own_reports_text(records, self.symbolizer)

    def close(self) -> None:
        if self.symbolizer is not None:
            self.symbolizer.close()
            self.symbolizer = None


_SESSION = pytest.StashKey[_Session]()
_OPTIONS = pytest.StashKey[dict[str, str]]()  # of a sampled test
_SEEN = pytest.StashKey[tuple[int, dict[int, int]]]()
_WORKER_USAGE_ERROR = "kfence_py_usage_error"  # in an xdist worker's workeroutput


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kfence", "kfence_py memory-error sampling")
    group.addoption("--kfence", action="store_true", default=None, dest="kfence",
                    help=f"sample CPython's allocator in every test; fail tests with reports "
                    f"(else ${ENV_FLAG}, else the ini option kfence)")
    group.addoption("--no-kfence", action="store_false", default=None, dest="kfence",
                    help=f"sample only tests marked kfence, whatever ${ENV_FLAG} or the "
                    "ini file say")
    group.addoption("--kfence-options", default=None, metavar="OPTIONS", dest="kfence_options",
                    help="KFENCE_OPTIONS for --kfence and marked tests; those fixed at start "
                    "(num_objects, placement, ...) apply to the whole session (else "
                    f"${ENV_OPTIONS}, else the ini option kfence_options, else "
                    f"{DEFAULT_OPTIONS})")
    parser.addini("kfence", "sample CPython's allocator in every test, as --kfence",
                  type="bool", default=False)
    parser.addini("kfence_options", "options for kfence_py, as --kfence-options",
                  type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kfence(**options): sample CPython's allocator with kfence_py during "
        "this test (options as in KFENCE_OPTIONS) and fail it if a bug is reported")
    every_test, _ = _every_test(config)
    text, origin, given = _options_text(config)
    session = _Session(every_test, text, origin)
    config.stash[_SESSION] = session
    log.addHandler(session.warnings)
    if every_test or given:
        session.session_options()  # a bad option stops the run before collection


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        log.removeHandler(session.warnings)
        session.close()


def _marker_options(item: pytest.Item, specs: Mapping[str, OptionSpec]) -> dict[str, str] | None:
    marker = item.get_closest_marker("kfence")
    if marker is None:
        return None
    where = f"{item.nodeid}: @pytest.mark.kfence"
    if marker.args:
        raise pytest.UsageError(f"{where} takes options as keywords (sample_rate=1), "
                                f"not {marker.args!r}")
    return {k: _normalize(specs, k, v, where) for k, v in marker.kwargs.items()}


def pytest_collection_finish(session: pytest.Session) -> None:
    try:
        _prepare(session)
    except pytest.UsageError as exc:
        # An xdist worker: its controller stops the run with the same usage error.
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[_WORKER_USAGE_ERROR] = str(exc)
        raise


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: a worker that stopped on a usage error stops the run with it."""
    message = getattr(node, "workeroutput", {}).get(_WORKER_USAGE_ERROR)
    if message is not None:
        raise pytest.UsageError(message)


def _prepare(session: pytest.Session) -> None:
    """Check every option of the tests to sample, then start the library."""
    state = session.config.stash.get(_SESSION, None)
    if state is None or not session.items:
        return
    if not state.every_test and not any(item.get_closest_marker("kfence")
                                        for item in session.items):
        return
    options = _native("options")
    specs = options.option_specs()
    runtime = options.runtime_options()
    # In each test, the run-time options (the others are fixed at start), then the marker's.
    base = {k: v for k, v in state.session_options().items() if k in runtime}
    for item in session.items:
        own = _marker_options(item, specs)
        if own is not None or state.every_test:
            item.stash[_OPTIONS] = base | (own or {})
    if not session.config.option.collectonly:
        state.activate()


def _seen() -> tuple[int, dict[int, int]]:
    """The bug count, and the repeats of each recorded report by sequence.

    A bug whose kind and sites were printed before (dedup_reports) adds no
    report, only to the bug count and to that report's repeats.
    """
    from ._native import lib
    from .state import StateView

    state = StateView.in_process()
    if state is None:
        return 0, {}
    return (state.counter(lib.KFENCE_COUNTER_BUGS),
            {r.sequence: r.repeats for r in state.reports()})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, None]:
    state = item.config.stash.get(_SESSION, None)
    if state is None or not state.active:
        yield
        return
    options = item.stash.get(_OPTIONS, None)
    if options is None:  # not sampled, but a fault on an earlier test's object is its
        item.stash[_SEEN] = _seen()
        yield
        return
    from .api import sampling

    item.stash[_SEEN] = _seen()
    with sampling(python_allocator=True, **options):
        yield


@contextmanager
def _python_allocator_paused() -> Iterator[None]:
    """The plugin's own work (reading the state, rendering) is not the test's: not sampled.

    With sample_rate=1 each of its objects would take a pool slot and a page.
    """
    from . import _pyext

    was = _pyext.python_sampling()
    _pyext.set_python_sampling(False)
    try:
        yield
    finally:
        _pyext.set_python_sampling(was)


# Outermost: sees the report as the other plugins (skipping: xfail) left it.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    state = item.config.stash.get(_SESSION, None)
    seen = item.stash.get(_SEEN, None)
    if state is None or seen is None:
        yield
        return
    # pytest's own work on the report (a failure's traceback reads every module's
    # source path) is not the test's either.
    with _python_allocator_paused():
        outcome = yield
        _attach_reports(item, call.when, outcome.get_result(), state, seen)


def _attach_reports(item: pytest.Item, when: str, report: pytest.TestReport, state: _Session,
                    seen: tuple[int, dict[int, int]]) -> None:
    """Fail a phase of a test during which bugs were reported, or add them to its failure."""
    (bugs_before, repeats_before), now = seen, _seen()
    bugs = now[0] - bugs_before
    if not bugs:
        return
    item.stash[_SEEN] = now
    from .api import reports
    from .reports import title

    new = [r for r in reports()
           if r.sequence not in repeats_before or r.repeats > repeats_before[r.sequence]]
    kinds = ", ".join(title(r.kind, r.access) for r in new)
    text = (f"kfence_py reported {bugs} memory bug(s) during {when}: {kinds}\n"
            f"{state.render(new)}")
    if report.failed:
        # The test's own failure stays its failure; the report goes beside it.
        report.sections.append((f"kfence_py report ({when})", text))
        return
    report.outcome = "failed"
    report.longrepr = text
    if hasattr(report, "wasxfail"):  # an expected failure, but not a memory bug
        del report.wasxfail


def _checked() -> str | None:
    """One line on what sampling checked in this process, or None if it never ran."""
    from .state import StateView

    state = StateView.in_process()
    if state is None:
        return None
    s = state.stats()
    line = f"{s.total_allocations} guarded allocation(s), {s.total_bugs} bug(s)"
    skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in s.skipped.items() if n)
    if skipped:
        line += f"; skipped: {skipped}"
    if s.skipped.get("capacity"):
        line += (f"; the pool ({s.pool_size} slots) was the limit: num_objects in "
                 "--kfence-options guards more")
    return line


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is None or not state.active:
        return
    checked = _checked()
    messages = state.warnings.messages
    if checked is None and not messages:
        return
    terminalreporter.section("kfence_py")
    if checked is not None:
        terminalreporter.line(checked)
    for message in messages:
        terminalreporter.line(f"warning: {message}")
