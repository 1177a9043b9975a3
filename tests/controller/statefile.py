"""Real state files, copied and patched: the header fields by name."""

from __future__ import annotations

import struct
from pathlib import Path

from kfence_py._native import ffi, lib

BUGS = lib.KFENCE_COUNTER_BUGS


def offset(field: str, struct_name: str = "struct kfence_state") -> int:
    return ffi.offsetof(struct_name, field)


def put_u32(data: bytearray, at: int, value: int) -> None:
    struct.pack_into("=I", data, at, value)


def put_u64(data: bytearray, at: int, value: int) -> None:
    struct.pack_into("=Q", data, at, value)


def get_u64(data: bytes, at: int) -> int:
    return struct.unpack_from("=Q", data, at)[0]


def copy_state(data: bytes, pid: int, *, bugs: int | None = None,
               start_realtime_ns: int | None = None) -> bytearray:
    """data (a real state file) as the state of pid, with other fields changed."""
    copy = bytearray(data)
    put_u32(copy, offset("pid"), pid)
    counters = offset("counters")
    if bugs is not None:
        put_u64(copy, counters + 8 * BUGS, bugs)
    if start_realtime_ns is not None:
        put_u64(copy, offset("start_realtime_ns"), start_realtime_ns)
    return copy


def write_state(state_dir: Path, data: bytes, pid: int, **fields: int) -> Path:
    path = state_dir / f"{pid}.state"
    path.write_bytes(copy_state(data, pid, **fields))
    path.chmod(0o600)
    return path
