"""pytest plugin: run tests with CPython's allocator sampled, fail those with reports.

``pytest --kfence`` samples every test; ``@pytest.mark.kfence(sample_rate=1)``
one test, with options.  A test during which kfence_py reported a bug fails,
with the report in its failure (the full text is in its captured stderr).
Works beside pytest's faulthandler plugin: ours is installed after it, so pool
faults reach us first and everything else still reaches faulthandler.
kfence_py's warnings (tracemalloc restarted, allocator hooked by another tool)
are repeated in a "kfence_py" section of the terminal summary, as pytest
captures logging per test.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import pytest

from . import api
from ._native import lib
from .options import option_specs
from .reports import title

_SEEN = pytest.StashKey[tuple[int, dict[int, int]]]()
_ENABLED = pytest.StashKey[bool]()


class _Warnings(logging.Handler):
    """Keeps the warnings of the kfence_py logger for the terminal summary."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_WARNINGS = pytest.StashKey[_Warnings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kfence", "kfence_py memory-error sampling")
    group.addoption("--kfence", action="store_true",
                    help="sample CPython's allocator in every test; fail tests with reports")
    # A big pool: with sample_rate=1, long-lived objects of earlier tests keep their slots.
    group.addoption("--kfence-options", default="sample_rate=1:num_objects=4096",
                    metavar="OPTIONS",
                    help="KFENCE_OPTIONS for --kfence and marked tests; those fixed at start "
                    "(num_objects, placement, ...) apply from the first sampled test "
                    "(default: %(default)s)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kfence(**options): sample CPython's allocator with kfence_py during "
        "this test (options as in KFENCE_OPTIONS) and fail it if a bug is reported")
    handler = _Warnings()
    api.log.addHandler(handler)
    config.stash[_WARNINGS] = handler


def pytest_unconfigure(config: pytest.Config) -> None:
    handler = config.stash.get(_WARNINGS, None)
    if handler is not None:
        api.log.removeHandler(handler)


def _checked() -> str | None:
    """One line on what sampling checked in this process, or None if it never ran."""
    state = api.StateView.in_process()
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
    handler = config.stash.get(_WARNINGS, None)
    checked = _checked()
    messages = handler.messages if handler is not None else []
    if checked is None and not messages:
        return
    terminalreporter.section("kfence_py")
    if checked is not None:
        terminalreporter.line(checked)
    for message in messages:
        terminalreporter.line(f"warning: {message}")


def _options(item: pytest.Item) -> dict[str, Any] | None:
    marker = item.get_closest_marker("kfence")
    if marker is None and not item.config.getoption("--kfence"):
        return None
    options: dict[str, Any] = {}
    text = item.config.getoption("--kfence-options")
    for pair in filter(None, text.split(":")):
        key, _, value = pair.partition("=")
        if key not in option_specs():
            raise pytest.UsageError(f"--kfence-options: unknown option {key!r}")
        options[key] = value
    if marker is not None:
        options.update(marker.kwargs)
    return options


def _seen() -> tuple[int, dict[int, int]]:
    """The bug count, and the repeats of each recorded report by sequence.

    A bug whose kind and sites were printed before (dedup_reports) adds no
    report, only to the bug count and to that report's repeats.
    """
    state = api.StateView.in_process()
    if state is None:
        return 0, {}
    return (state.counter(lib.KFENCE_COUNTER_BUGS),
            {r.sequence: r.repeats for r in state.reports()})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, None]:
    options = _options(item)
    if options is None:
        yield
        return
    with api.sampling(python_allocator=True, **options):
        item.stash[_SEEN] = _seen()
        item.stash[_ENABLED] = True
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if not item.stash.get(_ENABLED, False):
        return
    (bugs_before, repeats_before), now = item.stash[_SEEN], _seen()
    bugs = now[0] - bugs_before
    if not bugs:
        return
    item.stash[_SEEN] = now
    new = [r for r in api.reports()
           if r.sequence not in repeats_before or r.repeats > repeats_before[r.sequence]]
    report = outcome.get_result()
    kinds = ", ".join(title(r.kind, r.access) for r in new)
    from .render import own_reports_text  # the renderer and its imports only when needed

    text = own_reports_text(new)
    report.outcome = "failed"
    report.longrepr = (f"kfence_py reported {bugs} memory bug(s) during {call.when}: "
                       f"{kinds}\n{text}")
