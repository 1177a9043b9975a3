"""Hostile KFENCE_OPTIONS: thousands of strings, never a crash, one warning per bad item."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kfence_py
from kfence_py._native import lib
from kfence_py.options import OptionItem, option_specs, split_options

NAMES = list(option_specs())
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "0", "1", "yes", "off", "random", "left", "right", "16", "4097",
                     "18446744073709551616", "-1", "0x10", " 1", "1 ", "/tmp/x", "=", "a=b",
                     "'/tmp/a b'", '"x', "'", "\"'\"", "a,b", "\t"]),
    st.text(max_size=40),
)
ITEM = st.one_of(
    st.tuples(st.sampled_from(NAMES), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=30),
    st.sampled_from(["", "=", "==", "sample_rate", "unknown=1", "enabled=1=1"]),
)
SEPARATORS = st.text(alphabet=" ,:\t\n\r", min_size=1, max_size=3)
OPTIONS = st.lists(st.tuples(ITEM, SEPARATORS), max_size=12).map(
    lambda pairs: "".join(item + sep for item, sep in pairs))


def items(text: str) -> list[OptionItem]:
    """The items as the library's tokenizer reads them."""
    return split_options(text)


@pytest.mark.slow
# capfd is read (and so emptied) in every example
@settings(max_examples=3000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=OPTIONS)
def test_parser_warns_once_per_refused_item(capfd, text):
    if "\0" in text:
        text = text.replace("\0", "")
    refused = lib.kfence_options_check(text.encode())
    warnings = [x for x in capfd.readouterr().err.splitlines() if x.startswith("kfence: ")]
    assert refused == len(warnings)
    assert refused <= len(items(text))


def test_defaults_are_accepted(capfd):
    text = ":".join(f"{k}={spec.default}" for k, spec in option_specs().items())
    assert lib.kfence_options_check(text.encode()) == 0
    assert capfd.readouterr().err == ""


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(text=OPTIONS)
def test_host_program_runs_whatever_the_options(text):
    text = text.replace("\0", "")
    env = {**os.environ, "LD_PRELOAD": str(kfence_py.lib_path()), "KFENCE_OPTIONS": text}
    # state_dir would create directories where the fuzzer says: keep it out; help=1 prints
    # a table, not warnings (test_options_grammar.py)
    env["KFENCE_OPTIONS"] = ":".join(x.text for x in items(text)
                                     if x.key not in ("state_dir", "report_path", "help"))
    proc = subprocess.run(["/bin/echo", "alive"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and proc.stdout == "alive\n", proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("kfence: ")]
    assert len(warnings) <= len(items(env["KFENCE_OPTIONS"])) + 1  # +1: a num_objects cap
