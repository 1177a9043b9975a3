"""What the controller needs to know about ELF files and the modules of a process.

Frames in reports are ``module+offset`` where the offset is the link-time
address (the pc minus the module's load bias), which is what addr2line and
llvm-symbolizer take.  A live process's raw pcs are turned into the same form
through /proc/<pid>/maps and the module's PT_LOAD segments.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class ElfInfo:
    """The facts about one ELF file that the controller uses."""

    machine: str  # e_machine, e.g. "EM_X86_64"
    elf_class: int  # 32 or 64
    type: str  # e_type, e.g. "ET_DYN"
    interpreter: str | None  # PT_INTERP: None for a static binary
    loads: tuple[tuple[int, int, int], ...]  # PT_LOAD (p_offset, p_filesz, p_vaddr)


class NotElf(Exception):
    """The file is not a readable ELF file."""


def elf_info(path: str | os.PathLike[str]) -> ElfInfo:
    """Read the ELF header and program headers of path; NotElf if it is none."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise NotElf(f"{path}: {exc.strerror}") from None
    return _elf_info(str(path), st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=128)
def _elf_info(path: str, inode: int, mtime_ns: int) -> ElfInfo:
    del inode, mtime_ns  # cache keys only: a rebuilt file is read again
    try:
        with open(path, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                raise NotElf(f"{path}: not an ELF file")
            f.seek(0)
            elf = ELFFile(f)
            interpreter = None
            loads = []
            for segment in elf.iter_segments():
                if isinstance(segment, InterpSegment):  # PT_INTERP
                    interpreter = segment.get_interp_name()
                elif segment["p_type"] == "PT_LOAD":
                    loads.append((segment["p_offset"], segment["p_filesz"],
                                  segment["p_vaddr"]))
            return ElfInfo(machine=elf["e_machine"], elf_class=elf.elfclass,
                           type=elf["e_type"], interpreter=interpreter, loads=tuple(loads))
    except (OSError, ELFError) as exc:
        raise NotElf(f"{path}: unreadable ELF file ({exc})") from None


def file_offset_to_vaddr(info: ElfInfo, file_offset: int) -> int | None:
    """The link-time address at file_offset, through the PT_LOAD segments."""
    for p_offset, p_filesz, p_vaddr in info.loads:
        if p_offset <= file_offset < p_offset + p_filesz:
            return file_offset - p_offset + p_vaddr
    return None


@dataclass(frozen=True)
class MappedFile:
    start: int
    end: int
    offset: int
    inode: int
    path: str


class ProcessMaps:
    """The file mappings of a live process, to turn its raw pcs into module+offset."""

    def __init__(self, mappings: list[MappedFile]) -> None:
        self.mappings = sorted(mappings, key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]

    @classmethod
    def read(cls, pid: int) -> ProcessMaps | None:
        """The maps of pid, or None when it is gone or not ours to read."""
        try:
            text = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return None
        return cls(list(parse_maps(text)))

    def maps_inode(self, inode: int) -> bool:
        return any(m.inode == inode for m in self.mappings)

    def resolve(self, pc: int) -> tuple[str, int] | None:
        """``(module, link-time address)`` of pc, or None outside any file."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0 or pc >= self.mappings[i].end:
            return None
        m = self.mappings[i]
        try:
            info = elf_info(m.path)
        except NotElf:
            return None
        vaddr = file_offset_to_vaddr(info, pc - m.start + m.offset)
        return None if vaddr is None else (m.path, vaddr)


def parse_maps(text: str) -> Iterator[MappedFile]:
    """Mappings of a file (path starting with '/') in /proc/<pid>/maps text."""
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].removesuffix(" (deleted)")
        yield MappedFile(start, end, int(parts[2], 16), int(parts[4]), path)


class _DlInfo(ctypes.Structure):
    _fields_: ClassVar = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                          ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def _dladdr() -> Any:
    fn = ctypes.CDLL(None).dladdr
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    return fn


def own_symbol(pc: int) -> str | None:
    """``name+0xoff`` of the dynamic symbol at or before pc in this process (dladdr)."""
    info = _DlInfo()
    if not _dladdr()(pc, ctypes.byref(info)) or not info.dli_sname or not info.dli_saddr:
        return None
    return f"{info.dli_sname.decode(errors='replace')}+{pc - info.dli_saddr:#x}"
