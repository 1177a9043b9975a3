"""The option table of libkfence.so, read from the library itself.

Every option is declared once, in csrc/options.inc; the C parser, this module,
the CLI and README's table all come from that list.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from ._native import ffi, lib, text
from .contract import PLACEMENTS


@dataclass(frozen=True)
class OptionSpec:
    """One entry of the option table."""

    name: str
    type: str  # UINT, MS, POW2, BOOL, PLACEMENT or STR
    default: str
    minimum: int
    maximum: int
    description: str
    runtime: bool  # a field of the control block (same name): changeable while the process runs

    def normalize(self, value: object) -> str:
        """The value as the library prints it; ValueError (saying why) if it would refuse it.

        The library's own validator decides, so Python and C cannot disagree.
        """
        if isinstance(value, bool):
            value = int(value)
        raw = str(value).strip()
        out, why = ffi.new("char[]", 512), ffi.new("char[]", 512)
        if lib.kfence_option_normalize(self.name.encode(), raw.encode(), out, len(out),
                                       why, len(why)) != 0:
            raise ValueError(f"{self.name}: {text(why)}, not {value!r}")
        return text(out)


def _spec(i: int) -> OptionSpec:
    d = lib.kfence_option_desc(i)
    return OptionSpec(text(d.name), text(d.type), text(d.default_value), d.min, d.max,
                      text(d.description), text(d.when) == "RUNTIME")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[OptionSpec, ...]:
    return tuple(_spec(i) for i in range(lib.kfence_option_count()))


def option_specs() -> dict[str, OptionSpec]:
    """Every option, in table order."""
    return {spec.name: spec for spec in _table()}


def runtime_options() -> dict[str, OptionSpec]:
    """The options of the control block, which change while the library runs, in table order.

    Each is a uint32_t field of struct kfence_control of the same name; the
    others are fixed at start.
    """
    return {spec.name: spec for spec in _table() if spec.runtime}


def _check_name(key: str) -> OptionSpec:
    specs = option_specs()
    if key not in specs:
        raise ValueError(f"unknown option {key!r}; known: {', '.join(specs)}")
    return specs[key]


def format_options(values: Mapping[str, object]) -> str:
    """Validated ``key=value:key=value`` text for KFENCE_OPTIONS.

    Each item is written by the library (a value holding a separator is
    quoted), so the library reads back exactly these values.
    """
    parts = []
    for key, value in values.items():
        _check_name(key)
        raw = str(int(value) if isinstance(value, bool) else value).strip()
        out, why = ffi.new("char[]", 1024), ffi.new("char[]", 512)
        if lib.kfence_option_item(key.encode(), raw.encode(), out, len(out), why, len(why)):
            raise ValueError(f"{key}: {text(why)}, not {value!r}")
        parts.append(text(out))
    return ":".join(parts)


@dataclass(frozen=True)
class OptionItem:
    """One item of a KFENCE_OPTIONS text, as the library's tokenizer reads it."""

    text: str  # the whole item, as written
    key: str
    value: str  # without its quotes
    status: int  # lib.KFENCE_ITEM_OK, _NOT_KEY_VALUE or _UNTERMINATED

    def problem(self) -> str | None:
        """Why the library would refuse this item, or None."""
        if self.status == lib.KFENCE_ITEM_NOT_KEY_VALUE:
            return f"{self.text!r} is not key=value"
        if self.status == lib.KFENCE_ITEM_UNTERMINATED:
            return f"{self.text!r} has no closing quote"
        try:
            _check_name(self.key).normalize(self.value)
        except ValueError as exc:
            return str(exc)
        return None


def split_options(options: str) -> list[OptionItem]:
    """The items of a KFENCE_OPTIONS text, split by the library's own tokenizer.

    The sanitizers' grammar: key=value items separated by any run of spaces,
    commas, colons, tabs or newlines; a value may be quoted ('...' or "...").
    """
    raw = options.encode()
    buf = ffi.new("char[]", raw)
    pos, item = ffi.new("size_t *"), ffi.new("struct kfence_options_item *")
    items = []
    while lib.kfence_options_next(buf, pos, item):
        items.append(OptionItem(
            raw[item.start:item.start + item.len].decode(errors="replace"),
            raw[item.key:item.key + item.key_len].decode(errors="replace"),
            raw[item.value:item.value + item.value_len].decode(errors="replace"),
            item.status))
    return items


def parse_options(options: str) -> dict[str, str]:
    """A KFENCE_OPTIONS text as option name to canonical value (later items win).

    ValueError, saying which item and why (with the values the option takes),
    for any item the library would refuse with a warning.
    """
    values: dict[str, str] = {}
    for item in split_options(options):
        problem = item.problem()
        if problem is not None:
            raise ValueError(problem)
        values[item.key] = option_specs()[item.key].normalize(item.value)
    return values


def markdown_table() -> str:
    """README's option table."""
    rows = ["| option | default | values | changes | meaning |", "|---|---|---|---|---|"]
    for spec in option_specs().values():
        if spec.type == "UINT":
            values = f"{spec.minimum}..{spec.maximum}"
        elif spec.type == "MS":
            values = f"{spec.minimum}..{spec.maximum} ms"
        elif spec.type == "POW2":
            values = f"power of two, {spec.minimum}..{spec.maximum}"
        elif spec.type == "BOOL":
            values = "0 or 1"
        elif spec.type == "PLACEMENT":
            values = " / ".join(PLACEMENTS)
        else:
            values = "path"
        default = f"`{spec.default}`" if spec.default else "(empty)"
        when = "at run time" if spec.runtime else "at start"
        rows.append(f"| `{spec.name}` | {default} | {values} | {when} | {spec.description} |")
    return "\n".join(rows) + "\n"
