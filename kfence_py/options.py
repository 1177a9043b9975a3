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


def format_options(values: Mapping[str, object]) -> str:
    """Validated ``key=value:key=value`` text for KFENCE_OPTIONS."""
    specs = option_specs()
    parts = []
    for key, value in values.items():
        if key not in specs:
            raise ValueError(f"unknown option {key!r}; known: {', '.join(specs)}")
        parts.append(f"{key}={specs[key].normalize(value)}")
    return ":".join(parts)


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
