"""The option table: one list, and everything derived from it agrees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kfence_py.options import format_options, markdown_table, option_specs

README = Path(__file__).resolve().parents[2] / "README.md"

# Names other tools rely on (the core issue fixes them).
FIXED_NAMES = ["sample_interval", "sample_rate", "num_objects", "burst", "placement", "align",
               "halt_on_error", "exitcode", "report_path", "leak_check", "enabled",
               "stack_depth", "state_dir"]


def test_fixed_names_exist():
    assert set(FIXED_NAMES) <= set(option_specs())


def test_readme_table_is_the_generated_one():
    text = README.read_text()
    match = re.search(r"<!-- options-table:begin -->\n(.*)<!-- options-table:end -->", text, re.S)
    assert match, "README lost its option table markers"
    assert match.group(1) == markdown_table(), "run: kfence-py options --markdown"


def test_defaults_are_valid_values():
    for spec in option_specs().values():
        assert spec.normalize(spec.default) == spec.default


@pytest.mark.parametrize(("values", "text"), [
    ({"sample_rate": 1, "placement": "left"}, "sample_rate=1:placement=left"),
    ({"halt_on_error": True, "leak_check": "off"}, "halt_on_error=1:leak_check=0"),
    ({"align": 64, "report_path": "/tmp/k"}, "align=64:report_path=/tmp/k"),
])
def test_format_options(values, text):
    assert format_options(values) == text


@pytest.mark.parametrize(("values", "message"), [
    ({"sample_rat": 1}, "unknown option 'sample_rat'"),
    ({"sample_rate": -1}, "sample_rate: expected an integer in 0..1000000000, not -1"),
    ({"num_objects": 0}, "num_objects: expected an integer in 1..65536"),
    ({"align": 24}, "align: expected a power of two in 1..4096"),
    ({"placement": "middle"}, "placement: expected random, left or right"),
    ({"leak_check": "maybe"}, "leak_check: expected 0/1, true/false, yes/no or on/off"),
    ({"report_path": "a:b"}, "report_path: expected a path without ':'"),
])
def test_bad_values_are_refused_with_a_message(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        format_options(values)
