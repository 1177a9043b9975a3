"""kfence_diagnose(): what a pool address means, on a state built here and on a live one.

The diagnosis is the fault handler's own (csrc/diagnose.c), run on a state
copied into memory, as a post-mortem reader would: no fault, no process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kfence_py
from kfence_py._native import ffi, lib

# Where the kfence_py these tests import lives (the source tree built in place, or an
# installed copy): the children import the same one, from outside the source tree.
PACKAGE_ROOT = Path(kfence_py.__file__).resolve().parents[1]
PAGE = 4096
NUM_SLOTS = 4
POOL = 0x7F0000000000
SLOTS_OFFSET = ffi.sizeof("struct kfence_state")  # the slots follow the header
SLOT_SIZE = ffi.sizeof("struct kfence_slot")


def guard(i: int) -> int:
    """Start of guard page i (between slots i - 1 and i)."""
    return POOL + 2 * i * PAGE


def data(slot: int) -> int:
    """Start of a slot's data page."""
    return POOL + (2 * slot + 1) * PAGE


class State:
    """A state as a post-mortem reader has it: a buffer of its own, nothing writing it."""

    def __init__(self, num_slots: int = NUM_SLOTS) -> None:
        self.buffer = bytearray(SLOTS_OFFSET + num_slots * SLOT_SIZE)
        self.cdata = ffi.from_buffer(self.buffer)
        self.header = ffi.cast("struct kfence_state *", self.cdata)
        h = self.header
        ffi.memmove(h.magic, b"KFENCE\0\0", 8)
        h.version = lib.KFENCE_STATE_VERSION
        h.header_size = ffi.sizeof("struct kfence_state")
        h.slot_size = SLOT_SIZE
        h.total_size = len(self.buffer)
        h.num_slots = num_slots
        h.page_size = PAGE
        h.pool_start = POOL
        h.pool_size = (2 * num_slots + 1) * PAGE
        h.slots_offset = SLOTS_OFFSET
        self.slots = ffi.cast("struct kfence_slot *", self.cdata + SLOTS_OFFSET)

    def put(self, slot: int, state: int, addr: int, size: int) -> None:
        s = self.slots[slot]
        s.state, s.addr, s.size = state, addr, size
        s.alloc_ns, s.free_ns = 1000 + slot, 2000 + slot if state == lib.KFENCE_SLOT_FREED else 0

    def diagnose(self, addr: int) -> tuple[int, object]:
        out = ffi.new("struct kfence_finding *")
        return lib.kfence_diagnose(self.header, addr, out), out


@pytest.fixture
def state() -> State:
    """Slot 0 live at its page's end, slot 1 freed at its page's start, 2 and 3 never used."""
    s = State()
    s.put(0, lib.KFENCE_SLOT_ALLOCATED, data(0) + PAGE - 32, 32)
    s.put(1, lib.KFENCE_SLOT_FREED, data(1), 64)
    return s


def bug(state: State, addr: int):
    rc, f = state.diagnose(addr)
    assert rc == lib.KFENCE_DIAGNOSIS_BUG
    assert f.addr == addr and f.page == addr - addr % PAGE
    return f


def test_out_of_bounds_right_counts_from_the_object_start(state):
    f = bug(state, guard(1))  # the first byte past slot 0's object
    assert (f.kind, f.slot, f.distance) == (lib.KFENCE_BUG_OOB, 0, 32)
    assert (f.guard, f.slot_state) == (1, lib.KFENCE_SLOT_ALLOCATED)
    assert (f.object_addr, f.object_size) == (data(0) + PAGE - 32, 32)
    f = bug(state, guard(1) + 100)
    assert (f.kind, f.slot, f.distance) == (lib.KFENCE_BUG_OOB, 0, 132)


def test_out_of_bounds_left_of_the_object(state):
    f = bug(state, guard(1) + PAGE - 1)  # the byte before slot 1's object
    assert (f.kind, f.slot, f.distance) == (lib.KFENCE_BUG_OOB, 1, -1)
    assert f.slot_state == lib.KFENCE_SLOT_FREED  # a freed neighbour is blamed too
    f = bug(state, guard(0) + 16)  # the first guard has one neighbour, on its right
    assert (f.kind, f.slot, f.distance, f.guard) == (lib.KFENCE_BUG_OOB, 0, -(2 * PAGE - 48), 0)


def test_nearest_neighbour_is_blamed(state):
    # Guard 1 lies between slot 0 (ends at its start) and slot 1 (starts at its end).
    for offset, slot in ((0, 0), (PAGE // 2 - 1, 0), (PAGE // 2 + 1, 1), (PAGE - 8, 1)):
        assert bug(state, guard(1) + offset).slot == slot, offset
    # Slot 1's object ends 64 bytes into its page: guard 2 blames it, from its start.
    f = bug(state, guard(2) + 8)
    assert (f.kind, f.slot, f.distance) == (lib.KFENCE_BUG_OOB, 1, PAGE + 8)


def test_use_after_free_on_a_freed_slot_data_page(state):
    for addr in (data(1), data(1) + 63, data(1) + PAGE - 1):  # the object, and past it
        f = bug(state, addr)
        assert (f.kind, f.slot, f.distance, f.guard) == (lib.KFENCE_BUG_UAF, 1, 0, -1)
        assert (f.slot_state, f.object_addr, f.object_size) == (lib.KFENCE_SLOT_FREED, data(1), 64)


def test_invalid_where_no_object_can_be_named(state):
    for addr in (data(2), data(3) + 5,      # never used
                 guard(3) + 1,              # between two unused slots
                 guard(NUM_SLOTS) + 7):     # the last guard, its one neighbour unused
        f = bug(state, addr)
        assert (f.kind, f.slot, f.distance) == (lib.KFENCE_BUG_INVALID, -1, 0), hex(addr)
        assert f.slot_state == lib.KFENCE_SLOT_UNUSED
    state.put(2, lib.KFENCE_SLOT_BUSY, data(2), 8)  # frozen mid-allocation: no object yet
    assert bug(state, data(2)).kind == lib.KFENCE_BUG_INVALID
    assert bug(state, guard(3)).kind == lib.KFENCE_BUG_INVALID


def test_a_live_object_page_is_no_bug(state):
    rc, f = state.diagnose(data(0) + PAGE - 1)
    assert rc == lib.KFENCE_DIAGNOSIS_LIVE
    assert (f.slot, f.slot_state, f.kind) == (0, lib.KFENCE_SLOT_ALLOCATED, lib.KFENCE_BUG_KINDS)


def test_not_ours_outside_the_pool(state):
    for addr in (0, POOL - 1, POOL + (2 * NUM_SLOTS + 1) * PAGE, 2**64 - 1):
        rc, f = state.diagnose(addr)
        assert rc == lib.KFENCE_DIAGNOSIS_NOT_OURS, hex(addr)
        assert (f.slot, f.page) == (-1, 0)


def test_slots_are_bounds_checked_against_num_slots(state):
    # A pool_size larger than num_slots accounts for: its extra pages have no slot to read.
    state.header.pool_size = (2 * NUM_SLOTS + 3) * PAGE
    f = bug(state, data(NUM_SLOTS))
    assert (f.kind, f.slot) == (lib.KFENCE_BUG_INVALID, -1)
    f = bug(state, guard(NUM_SLOTS + 1))
    assert (f.kind, f.slot) == (lib.KFENCE_BUG_INVALID, -1)


def test_a_state_that_is_none_is_refused(state):
    out = ffi.new("struct kfence_finding *")
    assert lib.kfence_diagnose(ffi.NULL, guard(1), out) == lib.KFENCE_DIAGNOSIS_BAD_STATE
    state.header.version += 1
    assert state.diagnose(guard(1))[0] == lib.KFENCE_DIAGNOSIS_BAD_STATE
    state.header.version -= 1
    state.header.page_size = 3000
    assert state.diagnose(guard(1))[0] == lib.KFENCE_DIAGNOSIS_BAD_STATE
    state.header.page_size = PAGE
    state.header.magic[0] = b"k"
    assert state.diagnose(guard(1))[0] == lib.KFENCE_DIAGNOSIS_BAD_STATE


FORGED = textwrap.dedent("""
    import sys
    from kfence_py._native import ffi, lib

    SLOT = ffi.sizeof("struct kfence_slot")
    buf = bytearray(4096)
    h = ffi.cast("struct kfence_state *", ffi.from_buffer(buf))
    ffi.memmove(h.magic, b"KFENCE\\0\\0", 8)
    h.version, h.page_size = lib.KFENCE_STATE_VERSION, 4096
    h.header_size, h.slot_size, h.total_size = ffi.sizeof("struct kfence_state"), SLOT, len(buf)
    h.pool_start, h.pool_size = 0x7F0000000000, 9 * 4096
    h.num_slots, h.slots_offset = 1, 512
    forged = {"slots_offset": 1 << 40, "num_slots": 1 << 30, "slot_size": 8, "header_size": 8}
    name = sys.argv[1]
    if name in forged:
        setattr(h, name, forged[name])
    out = ffi.new("struct kfence_finding *")
    print(lib.kfence_diagnose(h, 0x7F0000000000 + 4096 + 8, out))  # slot 0's data page
""")


@pytest.mark.parametrize("field", ["none", "slots_offset", "num_slots", "slot_size",
                                   "header_size"])
def test_a_forged_header_sends_no_read_outside_the_state(field, tmp_path):
    """The slots must lie inside the total_size bytes the caller has (a state file's copy)."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run([sys.executable, "-c", FORGED, field], env=env, capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, f"killed by signal {-proc.returncode}" + proc.stderr
    expected = lib.KFENCE_DIAGNOSIS_BUG if field == "none" else lib.KFENCE_DIAGNOSIS_BAD_STATE
    assert int(proc.stdout) == expected


LIVE = textwrap.dedent("""
    import ctypes, json
    from kfence_py._native import ffi, lib

    assert lib.kfence_init(ffi.NULL) == 0
    state = lib.kfence_state()
    obj = lib.kfence_alloc(24, 1, 2, 0, 0)   # right-placed: it ends at the guard page
    a = int(ffi.cast("uintptr_t", obj))

    def diagnose(st, addr):
        f = ffi.new("struct kfence_finding *")
        rc = lib.kfence_diagnose(st, addr, f)
        return [rc, f.kind, f.slot, f.distance, f.slot_state]

    found = {"live": diagnose(state, a), "oob": diagnose(state, a + 30)}
    lib.kfence_free(obj)
    found["uaf"] = diagnose(state, a + 1)
    # The same address faulting for real: the handler's report, from the ring.
    ctypes.string_at(a + 30, 1)
    r = ffi.cast("struct kfence_report *", ffi.cast("char *", state) + state.reports_offset)
    found["reported"] = [r.kind, r.slot, r.distance]
    # Post-mortem: a copy of the state, read by the plain reader.
    copy = bytearray(ffi.buffer(state, state.total_size))
    found["copy"] = diagnose(ffi.from_buffer("struct kfence_state *", copy), a + 30)
    print(json.dumps(found))
""")


def test_live_state_agrees_with_the_fault_handler(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "KFENCE_OPTIONS": "exitcode=0"}
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run([sys.executable, "-c", LIVE], env=env, capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    bug_, oob, uaf = lib.KFENCE_DIAGNOSIS_BUG, lib.KFENCE_BUG_OOB, lib.KFENCE_BUG_UAF
    slot = found["live"][2]
    assert slot >= 0
    assert found["live"] == [lib.KFENCE_DIAGNOSIS_LIVE, lib.KFENCE_BUG_KINDS, slot, 0,
                             lib.KFENCE_SLOT_ALLOCATED]
    assert found["oob"] == [bug_, oob, slot, 30, lib.KFENCE_SLOT_ALLOCATED]
    assert found["uaf"] == [bug_, uaf, slot, 0, lib.KFENCE_SLOT_FREED]
    # What the handler reported for the fault at a + 30 (the object freed by then).
    assert found["reported"] == [oob, slot, 30]
    assert found["copy"] == [bug_, oob, slot, 30, lib.KFENCE_SLOT_FREED]
    assert "BUG: KFENCE: out-of-bounds read" in proc.stderr
