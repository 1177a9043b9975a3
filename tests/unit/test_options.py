"""The option table: one list, and everything derived from it agrees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kfence_py._native import lib
from kfence_py.options import (
    format_options,
    markdown_table,
    option_specs,
    parse_options,
    split_options,
)

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
    ({"report_path": "x" * 256}, "report_path: expected a path shorter than 256 bytes"),
    ({"report_path": """a b'c"d"""}, "cannot have both ' and \""),
])
def test_bad_values_are_refused_with_a_message(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        format_options(values)


# --- the grammar: the sanitizers' separators, one tokenizer (the library's) ---


@pytest.mark.parametrize("text", [
    "sample_rate=1:num_objects=9",
    "sample_rate=1 num_objects=9",
    "sample_rate=1,num_objects=9",
    "sample_rate=1\tnum_objects=9",
    "sample_rate=1\nnum_objects=9",
    "sample_rate=1\r\nnum_objects=9",
    " ,:\t\nsample_rate=1 , : num_objects=9\n\n",
])
def test_every_separator_and_any_run_of_them(text):
    assert parse_options(text) == {"sample_rate": "1", "num_objects": "9"}


def test_a_quoted_value_keeps_its_separators():
    items = split_options("""report_path='/tmp/a b,c:d' state_dir="it's here" burst=2""")
    assert [(i.key, i.value) for i in items] == [
        ("report_path", "/tmp/a b,c:d"), ("state_dir", "it's here"), ("burst", "2")]
    assert items[0].text == "report_path='/tmp/a b,c:d'"


def test_a_quote_inside_a_value_is_a_character():
    assert parse_options("report_path=/tmp/it's") == {"report_path": "/tmp/it's"}


@pytest.mark.parametrize(("text", "message"), [
    ("sample_rate=-1", "sample_rate: expected an integer in 0..1000000000, not '-1'"),
    ("sample_interval=x", "expected an integer in 0..3600000 ms"),
    ("sample_rate=1 bogus=2", "unknown option 'bogus'"),
    ("sample_rate=1 num_objects", "'num_objects' is not key=value"),
    ("report_path='/tmp/a b", "\"report_path='/tmp/a b\" has no closing quote"),
])
def test_parse_options_refuses_what_the_library_would_warn_about(capfd, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_options(text)
    # ... and the library agrees: one warning for the one bad item.
    assert lib.kfence_options_check(text.encode()) == 1
    assert capfd.readouterr().err.count("kfence: ") == 1


def test_later_items_win():
    assert parse_options("burst=1 burst=2") == {"burst": "2"}


@pytest.mark.parametrize("path", ["/tmp/plain", "/tmp/a b", "/tmp/a,b:c\td", "/tmp/it's x",
                                  '/tmp/say "x"', "'/tmp/starts-with-a-quote", ""])
def test_format_options_writes_what_the_library_reads_back(path):
    text = format_options({"report_path": path, "sample_rate": 1})
    assert parse_options(text) == {"report_path": path, "sample_rate": "1"}
    assert ("'" in text or '"' in text) == (path not in ("/tmp/plain", ""))


def test_help_is_an_option_of_the_table():
    spec = option_specs()["help"]
    assert (spec.type, spec.default, spec.runtime) == ("BOOL", "0", False)


# --- kfence-py run reads the environment's KFENCE_OPTIONS in the same grammar ---


@pytest.mark.parametrize(("inherited", "rate", "objects"), [
    ("sample_rate=1 num_objects=32", "1", None),
    ("burst=1,sample_rate=7", "7", "4096"),
    ("sample_rate=7\tsample_rate=0", "0", None),
    ("report_path='/tmp/x sample_rate=5'", "0", None),
])
def test_run_reads_the_environment_with_the_library_tokenizer(monkeypatch, tmp_path, inherited,
                                                             rate, objects):
    from kfence_py.run import Runner, effective_option

    assert effective_option(inherited, "sample_rate") == rate
    monkeypatch.setenv("KFENCE_OPTIONS", inherited)
    state_dir = tmp_path / "state dir, with: separators"
    env = Runner(["true"], {}).environment(state_dir, state_dir / "report")
    ours = parse_options(env["KFENCE_OPTIONS"])
    assert ours["state_dir"] == str(state_dir), "a path with separators, quoted"
    assert ours["report_path"] == str(state_dir / "report")
    # 4096 slots in the test-suite mode unless the environment chose a size (which wins).
    assert ours.get("num_objects") == (objects or parse_options(inherited).get("num_objects"))
