"""The option table of libkfence.so, read from the library itself.

Every option is declared once, in csrc/options.inc; the C parser, this module,
the CLI and README's table all come from that list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._native import ffi, lib, text

_BOOL_WORDS = {"1": "1", "true": "1", "yes": "1", "on": "1",
               "0": "0", "false": "0", "no": "0", "off": "0"}
PLACEMENTS = ("random", "left", "right")


@dataclass(frozen=True)
class OptionSpec:
    """One entry of the option table."""

    name: str
    type: str  # UINT, POW2, BOOL, PLACEMENT or STR
    default: str
    minimum: int
    maximum: int
    description: str

    def normalize(self, value: object) -> str:
        """The value as KFENCE_OPTIONS text; ValueError if the library would refuse it."""
        if isinstance(value, bool):
            value = int(value)
        raw = str(value).strip()
        if self.type in ("UINT", "POW2"):
            if not (raw.isascii() and raw.isdigit()):  # int() takes other scripts' digits too
                raise ValueError(f"{self.name} must be an integer, not {value!r}")
            number = int(raw)
            if not self.minimum <= number <= self.maximum:
                raise ValueError(
                    f"{self.name} must be in {self.minimum}..{self.maximum}, not {number}")
            if self.type == "POW2" and number & (number - 1):
                raise ValueError(f"{self.name} must be a power of two, not {number}")
            return str(number)
        if self.type == "BOOL":
            if raw.lower() not in _BOOL_WORDS:
                raise ValueError(f"{self.name} must be a boolean (0/1), not {value!r}")
            return _BOOL_WORDS[raw.lower()]
        if self.type == "PLACEMENT":
            if raw not in PLACEMENTS:
                raise ValueError(f"{self.name} must be one of {', '.join(PLACEMENTS)}, "
                                 f"not {value!r}")
            return raw
        if ":" in raw or len(raw.encode()) >= 256:
            raise ValueError(f"{self.name} must be a path without ':' shorter than 256 bytes")
        return raw


def option_specs() -> dict[str, OptionSpec]:
    """Every option, in table order."""
    specs: dict[str, OptionSpec] = {}
    name, type_, default, desc = (ffi.new("char **") for _ in range(4))
    minimum, maximum = ffi.new("unsigned long long *"), ffi.new("unsigned long long *")
    for i in range(lib.kfence_option_count()):
        lib.kfence_option_info(i, name, type_, default, minimum, maximum, desc)
        spec = OptionSpec(text(name[0]), text(type_[0]), text(default[0]),
                          minimum[0], maximum[0], text(desc[0]))
        specs[spec.name] = spec
    return specs


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
    rows = ["| option | default | values | meaning |", "|---|---|---|---|"]
    for spec in option_specs().values():
        if spec.type == "UINT":
            values = f"{spec.minimum}..{spec.maximum}"
        elif spec.type == "POW2":
            values = f"power of two, {spec.minimum}..{spec.maximum}"
        elif spec.type == "BOOL":
            values = "0 or 1"
        elif spec.type == "PLACEMENT":
            values = " / ".join(PLACEMENTS)
        else:
            values = "path"
        default = f"`{spec.default}`" if spec.default else "(empty)"
        rows.append(f"| `{spec.name}` | {default} | {values} | {spec.description} |")
    return "\n".join(rows) + "\n"
