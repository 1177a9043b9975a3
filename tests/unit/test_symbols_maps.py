"""csrc/symbols.c's reading of /proc/self/maps, on maps text of the test's making.

tests/unit/symbols_harness.c compiles symbols.c with "/proc/self/maps"
opened as a file given here, so every odd line the kernel can write can be
tried without a kernel that writes it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB_SOURCE = ROOT / "tests" / "integration" / "progs" / "modlib.c"
BASE = 0x7F0000000000


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("symbols")
    exe = out / "harness"
    subprocess.run(["gcc", "-std=gnu11", "-O2", f"-I{ROOT / 'csrc'}",
                    str(Path(__file__).parent / "symbols_harness.c"), "-o", str(exe)],
                   check=True)
    return exe


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("symlib") / "libmod.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", str(LIB_SOURCE), "-o", str(out)],
                   check=True)
    return out


def text_segment(path: Path) -> tuple[int, int]:
    """(p_offset, p_vaddr) of the executable PT_LOAD segment."""
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", data,
                                                                phoff + i * phentsize)
        if p_type == 1 and p_flags & 1:
            return p_offset, p_vaddr
    raise AssertionError("no text segment")


def symbol_value(path: Path, name: str) -> int:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return next(int(v, 16) for v, _, n in (line.split() for line in out.splitlines()
                                          if len(line.split()) == 3) if n == name)


def describe(harness: Path, maps: Path, *args: int | str | Path) -> list[list[str]]:
    argv = [hex(a) if isinstance(a, int) else str(a) for a in args]
    out = subprocess.run([str(harness), str(maps), *argv], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def text_line(lo: int, path: str, lib: Path, symbol: str = "lib_static_oob") -> tuple[str, int]:
    """A maps line mapping lib's text at lo, and the address of symbol + 4 there."""
    offset, vaddr = text_segment(lib)
    page_off = offset & ~0xFFF
    addr = lo + (symbol_value(lib, symbol) - vaddr) + (offset - page_off) + 4
    return f"{lo:x}-{lo + 0x10000:x} r-xp {page_off:08x} 08:01 1234    {path}\n", addr


def test_a_path_with_spaces(harness, lib, tmp_path):
    spaced = tmp_path / "dir with  spaces" / "lib x.so"
    spaced.parent.mkdir()
    shutil.copy(lib, spaced)
    line, addr = text_line(BASE + 0x1000, str(spaced), lib)
    maps = tmp_path / "maps"
    maps.write_text(line)
    [[module, _, sym, sym_off]] = describe(harness, maps, addr)
    assert (module, sym, sym_off) == (str(spaced), "lib_static_oob", "0x4")


def test_a_named_anonymous_mapping_is_no_module(harness, lib, tmp_path):
    """PR_SET_VMA_ANON_NAME names may hold '/': "[anon:jit/code]" is no path."""
    line, addr = text_line(BASE + 0x1000, str(lib), lib)
    jit = BASE + 0x100000
    maps = tmp_path / "maps"
    maps.write_text(line + f"{jit:x}-{jit + 0x1000:x} r-xp 00000000 00:00 0"
                    "                          [anon:jit/code]\n")
    found = describe(harness, maps, jit + 0x10, addr)
    assert found[0][:1] == ["?"], found
    assert found[1][2] == "lib_static_oob"


def test_a_line_longer_than_the_buffer_is_skipped_whole(harness, lib, tmp_path):
    line, addr = text_line(BASE + 0x1000, str(lib), lib)
    far = BASE + 0x200000
    long_path = "/" + "x" * 6000 + "/" + str(lib)
    maps = tmp_path / "maps"
    maps.write_text(f"{far:x}-{far + 0x1000:x} r-xp 00000000 08:01 1 {long_path}\n" + line)
    found = describe(harness, maps, far + 8, addr)
    assert found[0][0] == "?"
    assert found[1][0] == str(lib) and found[1][2] == "lib_static_oob"


def test_a_deleted_module_keeps_its_file_offset(harness, lib, tmp_path):
    line, addr = text_line(BASE + 0x1000, f"{lib} (deleted)", lib)
    maps = tmp_path / "maps"
    maps.write_text(line)
    [[module, module_off, sym, _]] = describe(harness, maps, addr)
    offset, vaddr = text_segment(lib)
    assert (module, sym) == (f"{lib} (deleted)", "-")
    assert int(module_off, 16) == symbol_value(lib, "lib_static_oob") - vaddr + offset + 4


def test_a_report_cut_short_leaves_no_module_behind(harness, lib, tmp_path):
    """A fork while another thread reports: the child's first report starts afresh.

    The open module file is cached by its offset in the report's own path
    table, which the next report rebuilds: the same offset may then be
    another module.
    """
    other = tmp_path / "aa" / "libother.so"
    other.parent.mkdir()
    shutil.copy(lib, other)
    # Both paths have the same length: each is at offset 1 of its report's table.
    first = tmp_path / "bb" / "libfirst.so"
    first.parent.mkdir()
    src = tmp_path / "first.c"
    src.write_text("int first_only(int x) { return x * 3 + 1; }\n"
                   "int first_next(int x) { return x - 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", str(src), "-o", str(first)], check=True)
    assert len(str(first)) == len(str(other))
    line1, addr1 = text_line(BASE + 0x1000, str(first), first, "first_only")
    line2, addr2 = text_line(BASE + 0x100000, str(other), lib)
    maps1, maps2 = tmp_path / "maps1", tmp_path / "maps2"
    maps1.write_text(line1)
    maps2.write_text(line2)
    found = describe(harness, maps1, addr1, "--", maps2, addr2)
    assert found[0][0] == str(first) and found[0][2] == "first_only"
    assert found[1][0] == str(other) and found[1][2] == "lib_static_oob", found


def test_only_executable_mappings_are_modules(harness, lib, tmp_path):
    """A pc in a data mapping is stale: its file is not opened (it may be a device, or remote)."""
    line, addr = text_line(BASE + 0x1000, str(lib), lib)
    maps = tmp_path / "maps"
    maps.write_text(line.replace(" r-xp ", " rw-p "))
    [[module, _, sym, _]] = describe(harness, maps, addr)
    assert (module, sym) == ("?", "-")


def modules(harness: Path, maps: Path, *addrs: int) -> list[list[str]]:
    """The state's module table after one report's pass: start|end|bias|path|build-id."""
    out = subprocess.run([str(harness), str(maps), *(hex(a) for a in addrs)],
                         capture_output=True, text=True, timeout=30, check=True).stderr
    return [line.split("|") for line in out.splitlines() if not line.startswith("kfence:")]


def test_the_module_table_has_every_executable_file_mapping_with_bias_and_build_id(
        harness, lib, tmp_path):
    other = tmp_path / "libother.so"
    shutil.copy(lib, other)
    line, addr = text_line(BASE + 0x1000, str(lib), lib)
    unused, _ = text_line(BASE + 0x100000, str(other), lib)
    data = BASE + 0x200000
    jit = BASE + 0x300000
    maps = tmp_path / "maps"
    maps.write_text(line + unused
                    + f"{data:x}-{data + 0x1000:x} rw-p 00002000 08:01 1234    {lib}\n"
                    + f"{jit:x}-{jit + 0x1000:x} r-xp 00000000 00:00 0    [anon:jit]\n")
    table = modules(harness, maps, addr)
    assert [row[3] for row in table] == [str(lib), str(other)]
    start, end, bias, _, build = table[0]
    assert (int(start, 16), int(end, 16)) == (BASE + 0x1000, BASE + 0x11000)
    # pc - bias is the link-time address, what symbolizers take (module+offset).
    assert addr - int(bias, 16) == symbol_value(lib, "lib_static_oob") + 4
    expected = subprocess.run(["readelf", "-n", str(lib)], capture_output=True, text=True,
                              check=True).stdout.split("Build ID: ")[1].split()[0]
    assert build == expected and len(build) == 40
    assert table[1][4] == expected  # a copy: the same build-id


def test_a_module_that_is_not_elf_is_placed_by_its_file_offset(harness, tmp_path):
    blob = tmp_path / "code.bin"
    blob.write_bytes(b"\x90" * 0x3000)
    lo = BASE + 0x5000
    maps = tmp_path / "maps"
    maps.write_text(f"{lo:x}-{lo + 0x1000:x} r-xp 00002000 08:01 77    {blob}\n")
    [[start, _, bias, path, build]] = modules(harness, maps, lo + 0x10)
    assert (int(start, 16), path, build) == (lo, str(blob), "")
    assert lo + 0x10 - int(bias, 16) == 0x2010
