"""What the controller needs to know about ELF files and the modules of a process.

Frames in reports are ``module+offset`` where the offset is the link-time
address (the pc minus the module's load bias), which is what addr2line and
llvm-symbolizer take.  Raw pcs are turned into the same form through the
module table the library keeps in the state (path, bias and build-id of each
module a stack reached: it outlives the process), and, for a pc it lacks,
through /proc/<pid>/maps and the module's PT_LOAD segments while the
process runs.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

log = logging.getLogger("kfence_py")

ELF_MAGIC = b"\x7fELF"
DELETED = " (deleted)"  # /proc/<pid>/maps' mark of a file removed since it was mapped


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
    # pyelftools is imported where it is used: importing kfence_py (which the pytest
    # plugin's entry point does in every session) would otherwise cost ~100 ms.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

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


def _file_key(path: str) -> tuple[str, int, int, int] | None:
    """A cache key that changes when the file does (a rebuilt module is read again)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino, st.st_mtime_ns


def build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build-id of an ELF file, in hex; None if it has none or is no ELF file."""
    key = _file_key(os.fspath(path))
    return _build_id(key) if key else None


@functools.lru_cache(maxsize=512)
def _build_id(key: tuple[str, int, int, int]) -> str | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection
    from elftools.elf.segments import NoteSegment

    try:
        with open(key[0], "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
            f.seek(0)
            elf = ELFFile(f)
            # The sections first: a separate debug file keeps its note section but not
            # the segments' contents.  A file without section headers has only segments.
            notes: list[Any] = [s for s in elf.iter_sections() if isinstance(s, NoteSection)]
            if not notes:
                notes = [s for s in elf.iter_segments() if isinstance(s, NoteSegment)]
            for holder in notes:
                for note in holder.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                        return str(note["n_desc"])
    except (OSError, ELFError, ValueError, KeyError) as exc:
        log.debug("no build-id read from %s: %s", key[0], exc)
    return None


def has_debug_info(path: str | os.PathLike[str]) -> bool:
    """Whether an ELF file carries DWARF line information itself (not stripped)."""
    key = _file_key(os.fspath(path))
    return _has_debug_info(key) if key else False


@functools.lru_cache(maxsize=512)
def _has_debug_info(key: tuple[str, int, int, int]) -> bool:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(key[0], "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return False
            f.seek(0)
            elf = ELFFile(f)
            for name in (".debug_line", ".zdebug_line"):
                section = elf.get_section_by_name(name)
                if section is not None and section["sh_type"] != "SHT_NOBITS" and \
                        section["sh_size"]:
                    return True
    except (OSError, ELFError, ValueError) as exc:
        log.debug("cannot read %s: %s", key[0], exc)
    return False


def file_offset_to_vaddr(info: ElfInfo, file_offset: int) -> int | None:
    """The link-time address at file_offset, through the PT_LOAD segments."""
    for p_offset, p_filesz, p_vaddr in info.loads:
        if p_offset <= file_offset < p_offset + p_filesz:
            return file_offset - p_offset + p_vaddr
    return None


@dataclass(frozen=True)
class Module:
    """An executable mapping of a file in a process: where, its load bias, its build-id."""

    start: int
    end: int  # [start, end)
    bias: int  # the load address: pc - bias is the address in the ELF file
    path: str
    build_id: str | None  # hex; None when the library found none

    def offset(self, pc: int) -> int:
        """The link-time address of pc (what reports show as module+offset)."""
        return pc - self.bias

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "build_id": self.build_id, "load_address": self.bias,
                "start": self.start, "end": self.end}


class Placer(Protocol):
    """Where the pcs of one process lie."""

    def module_at(self, pc: int) -> Module | None: ...


class ModuleTable:
    """The module table a process left in its state: places its pcs after it exited.

    Entries never overlap in a process; if a module was unloaded and another
    mapped at the same start, the one recorded later wins.
    """

    def __init__(self, modules: Iterable[Module]) -> None:
        ordered = sorted(enumerate(modules), key=lambda im: (im[1].start, im[0]))
        self.modules = [m for _, m in ordered]
        self._starts = [m.start for m in self.modules]

    def module_at(self, pc: int) -> Module | None:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0 or pc >= self.modules[i].end:
            return None
        return self.modules[i]

    def by_path(self, path: str) -> Module | None:
        """The (last recorded) module of a file, by the path a report shows."""
        path = path.removesuffix(DELETED)
        found = [m for m in self.modules if m.path == path]
        return max(found, key=lambda m: m.start) if found else None


class Placers:
    """The first placer that knows a pc: the state's table, then the live maps."""

    def __init__(self, *placers: Placer | None) -> None:
        self.placers = [p for p in placers if p is not None]

    def module_at(self, pc: int) -> Module | None:
        for placer in self.placers:
            found = placer.module_at(pc)
            if found is not None:
                return found
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
        module = self.module_at(pc)
        return None if module is None else (module.path, module.offset(pc))

    def module_at(self, pc: int) -> Module | None:
        """The module of pc (its file read now for the bias and build-id), or None."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0 or pc >= self.mappings[i].end:
            return None
        m = self.mappings[i]
        try:
            info = elf_info(m.path)
        except NotElf:
            return None
        vaddr = file_offset_to_vaddr(info, pc - m.start + m.offset)
        if vaddr is None:
            return None
        return Module(m.start, m.end, pc - vaddr, m.path, build_id(m.path))


def parse_maps(text: str) -> Iterator[MappedFile]:
    """Mappings of a file (path starting with '/') in /proc/<pid>/maps text."""
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].removesuffix(DELETED)
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
