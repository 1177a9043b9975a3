"""module+offset frames to function, file:line and inlined frames.

Three back ends, best first: llvm-symbolizer (one long-lived process for every
module, JSON output), binutils' addr2line (one long-lived process per module)
and, when neither tool is installed, the DWARF line table read with pyelftools
(no inlined frames).  Answers are cached per (module, build-id, address).
The tool can be named, as the sanitizers' ASAN_SYMBOLIZER_PATH does:
KFENCE_SYMBOLIZER_PATH (an llvm-symbolizer, or an addr2line if its name says
so), else LLVM_SYMBOLIZER_PATH (an llvm-symbolizer).

The file looked up is the module itself when it carries its line table;
else its debug file, found by build-id (debuginfo.py: /usr/lib/debug, then
debuginfod).  A build-id from the state or a JSON record also finds the
debug file of a module that is not on this machine, and keeps a module
rebuilt since the process ran from being read for it.

Frames other than the faulting instruction are return addresses: the call is
the instruction before, so those are looked up at offset - 1 (as the report
header and every sanitizer symbolizer do) lest a call at the end of an inlined
block or before a line change be put on the next line.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import selectors
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from . import elf
from .debuginfo import DebugFiles
from .demangle import demangle, demangle_symbol
from .reports import FAULT_KINDS, FRAME, RULE, TITLE

log = logging.getLogger("kfence_py")

BACKENDS = ("auto", "llvm-symbolizer", "addr2line", "dwarf")
# A symbolizer that has not answered in this long is stuck: kill it, use the next one.
TOOL_TIMEOUT = 30.0
# An address no module has: its answer closes addr2line's output for the real one.
_SENTINEL = "0xffffffffffffffff"


@dataclass(frozen=True)
class SourceFrame:
    """One source-level frame; several for one pc when calls were inlined."""

    function: str | None
    file: str | None
    line: int | None
    column: int | None = None

    @property
    def location(self) -> str | None:
        if not self.file:
            return None
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}:{self.column}" if self.line and self.column else where

    def as_dict(self) -> dict[str, object]:
        return {"function": demangle(self.function) if self.function else None,
                "file": self.file, "line": self.line,
                "column": self.column}


class Backend(Protocol):
    name: str

    def lookup(self, module: str, address: int) -> list[SourceFrame]:
        """Source frames at address of module, innermost (inlined) first."""

    def close(self) -> None: ...


class ToolFailed(Exception):
    """A symbolizer process died, hung or answered nonsense."""


class _LineProcess:
    """A long-lived tool reading one query per line on stdin."""

    def __init__(self, argv: list[str]) -> None:
        # Not under kfence_py itself: it would publish a state of its own next to the target's.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
        self.name = argv[0]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, bufsize=0, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.stdout, selectors.EVENT_READ)
        self._pending = b""

    def send(self, text: str) -> None:
        try:
            self.stdin.write(text.encode())
        except OSError as exc:
            raise ToolFailed(f"cannot write to {self.name}: {exc}") from None

    def readline(self) -> str:
        while b"\n" not in self._pending:
            if not self._selector.select(TOOL_TIMEOUT):
                raise ToolFailed(f"{self.name} did not answer")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                raise ToolFailed(f"{self.name} exited")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode(errors="replace")

    def close(self) -> None:
        self._selector.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stdin.close()
        self.stdout.close()


def _unknown(value: str | None) -> bool:
    return not value or value.startswith("??")


class LlvmSymbolizer:
    """llvm-symbolizer: one process for every module, one JSON line per query."""

    name = "llvm-symbolizer"

    def __init__(self, tool: str) -> None:
        self._proc = _LineProcess([tool, "--output-style=JSON", "--inlines", "--demangle",
                                   "--functions=linkage"])

    def lookup(self, module: str, address: int) -> list[SourceFrame]:
        quoted = module.replace('"', "")  # the tool's own quoting has no escapes
        self._proc.send(f'"{quoted}" {address:#x}\n')
        try:
            answer = json.loads(self._proc.readline())
        except ValueError as exc:
            raise ToolFailed(f"unreadable answer from llvm-symbolizer: {exc}") from None
        frames = []
        for sym in answer.get("Symbol", []):
            function = None if _unknown(sym.get("FunctionName")) else sym["FunctionName"]
            file = None if _unknown(sym.get("FileName")) else sym["FileName"]
            frames.append(SourceFrame(function, file, sym.get("Line") or None,
                                      sym.get("Column") or None))
        return [f for f in frames if f.function or f.file]

    def close(self) -> None:
        self._proc.close()


class Addr2Line:
    """binutils' addr2line: a process per module (it takes one -e)."""

    name = "addr2line"

    def __init__(self, tool: str) -> None:
        self._tool = tool
        self._procs: dict[str, _LineProcess] = {}

    def _process(self, module: str) -> _LineProcess:
        proc = self._procs.get(module)
        if proc is None:
            proc = _LineProcess([self._tool, "-a", "-f", "-i", "-C", "-e", module])
            self._procs[module] = proc
        return proc

    def lookup(self, module: str, address: int) -> list[SourceFrame]:
        # -a echoes each address before its frames, and -i prints a varying
        # number of frames: the echo of a sentinel address marks the end.
        proc = self._process(module)
        proc.send(f"{address:#x}\n{_SENTINEL}\n")
        proc.readline()  # the echo of our address
        lines = []
        while (line := proc.readline()) != _SENTINEL:
            lines.append(line)
        proc.readline()  # the sentinel's "??" and "??:0"
        proc.readline()
        frames = []
        for function, where in zip(lines[::2], lines[1::2]):
            file, _, line_text = where.rpartition(":")
            line_no = line_text.split(" ", 1)[0]  # "12 (discriminator 3)"
            frames.append(SourceFrame(
                None if _unknown(function) else function,
                None if _unknown(file) else file,
                int(line_no) if line_no.isdigit() and line_no != "0" else None))
        return [f for f in frames if f.function or f.file]

    def close(self) -> None:
        for proc in self._procs.values():
            proc.close()
        self._procs.clear()


class _DwarfModule:
    """Line table and function symbols of one module, read with pyelftools."""

    def __init__(self, path: str) -> None:
        self.rows: list[tuple[int, str | None, int | None]] = []  # address, file, line
        self.functions: list[tuple[int, int, str]] = []  # start, end, name
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for section in elf.iter_sections():
                if isinstance(section, SymbolTableSection):
                    for sym in section.iter_symbols():
                        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                            start = sym["st_value"]
                            self.functions.append((start, start + max(sym["st_size"], 1),
                                                   sym.name))
            if elf.has_dwarf_info():
                self._read_lines(elf)
        self.rows.sort(key=lambda r: r[0])
        self.functions.sort()
        self._row_starts = [r[0] for r in self.rows]
        self._fn_starts = [f[0] for f in self.functions]

    def _read_lines(self, elf: ELFFile) -> None:
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            version = program["version"]
            files = program["file_entry"]
            dirs = program["include_directory"]
            for entry in program.get_entries():
                state = entry.state
                if state is None:
                    continue
                if state.end_sequence:
                    self.rows.append((state.address, None, None))  # a gap follows
                    continue
                index = state.file if version >= 5 else state.file - 1
                name = None
                if 0 <= index < len(files):
                    fe = files[index]
                    name = fe.name.decode(errors="replace")
                    dir_index = fe.dir_index if version >= 5 else fe.dir_index - 1
                    if not name.startswith("/") and 0 <= dir_index < len(dirs):
                        name = os.path.join(dirs[dir_index].decode(errors="replace"), name)
                self.rows.append((state.address, name, state.line))

    def lookup(self, address: int) -> list[SourceFrame]:
        function = None
        i = bisect.bisect_right(self._fn_starts, address) - 1
        if i >= 0 and address < self.functions[i][1]:
            function = self.functions[i][2]
        file = line = None
        j = bisect.bisect_right(self._row_starts, address) - 1
        if j >= 0:
            _, file, line = self.rows[j]
        if not function and not file:
            return []
        return [SourceFrame(function, file, line)]


class DwarfLines:
    """pyelftools: the DWARF line table and .symtab; no inlined frames."""

    name = "dwarf"

    def __init__(self) -> None:
        self._modules: dict[str, _DwarfModule | None] = {}

    def lookup(self, module: str, address: int) -> list[SourceFrame]:
        if module not in self._modules:
            try:
                self._modules[module] = _DwarfModule(module)
            except (OSError, ELFError, ValueError) as exc:
                log.debug("cannot read %s: %s", module, exc)
                self._modules[module] = None
        table = self._modules[module]
        return table.lookup(address) if table else []

    def close(self) -> None:
        self._modules.clear()


# The environment variables that name a symbolizer tool, first found first.
TOOL_VARIABLES = ("KFENCE_SYMBOLIZER_PATH", "LLVM_SYMBOLIZER_PATH")


def named_tool(env: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(back end, executable) named by KFENCE_SYMBOLIZER_PATH, else LLVM_SYMBOLIZER_PATH.

    KFENCE_SYMBOLIZER_PATH speaks addr2line's protocol when its name says
    addr2line, else llvm-symbolizer's; LLVM_SYMBOLIZER_PATH is an
    llvm-symbolizer.  A name that is no executable is warned about and skipped.
    """
    for variable in TOOL_VARIABLES:
        value = env.get(variable)
        if not value:
            continue
        tool = shutil.which(value)
        if tool is None:
            log.warning("%s=%s is not an executable file; ignored", variable, value)
            continue
        addr2line = variable == "KFENCE_SYMBOLIZER_PATH" and \
            "addr2line" in os.path.basename(tool)
        return ("addr2line" if addr2line else "llvm-symbolizer"), tool
    return None


def _make_backend(name: str) -> Backend:
    named = named_tool() if name != "dwarf" else None
    if named is not None and name in ("auto", named[0]):
        kind, path = named
        return LlvmSymbolizer(path) if kind == "llvm-symbolizer" else Addr2Line(path)
    if name in ("auto", "llvm-symbolizer") and (tool := shutil.which("llvm-symbolizer")):
        return LlvmSymbolizer(tool)
    if name in ("auto", "addr2line") and (tool := shutil.which("addr2line")):
        return Addr2Line(tool)
    if name in ("auto", "dwarf"):
        return DwarfLines()
    log.warning("%s is not installed; symbolizing with pyelftools", name)
    return DwarfLines()


class Symbolizer:
    """Source frames for module+offset, cached; safe to share between threads.

    A tool that fails is dropped for the next back end (addr2line, then
    pyelftools), so a report is never lost to a broken symbolizer.
    debug_files finds debug information by build-id (default: /usr/lib/debug
    and the environment's debuginfod servers).
    """

    def __init__(self, backend: str = "auto", *, debug_files: DebugFiles | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown symbolizer {backend!r}; one of {', '.join(BACKENDS)}")
        self._wanted = backend
        self._backend: Backend | None = None  # started at the first lookup
        self._debug = debug_files if debug_files is not None else DebugFiles.from_environment()
        self._cache: dict[tuple[str, str | None, int], list[SourceFrame]] = {}
        self._files: dict[tuple[str, str | None], str | None] = {}  # module to file read
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        with self._lock:
            return self._started().name

    def _started(self) -> Backend:
        if self._backend is None:
            self._backend = _make_backend(self._wanted)
        return self._backend

    def lookup(self, module: str, offset: int, *, return_address: bool,
               build_id: str | None = None) -> list[SourceFrame]:
        """Source frames of module+offset, innermost first; [] when unknown.

        build_id: the module's, as the process that ran it had it (state,
        JSON record); None to read it from the file here.
        """
        address = offset - 1 if return_address and offset else offset
        key = (module, build_id, address)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            target = self._file(module, build_id)
            frames = self._lookup(target, address) if target else []
            self._cache[key] = frames
            return frames

    def file_for(self, module: str, build_id: str | None = None) -> str | None:
        """The file read for module: itself, its debug file, or None."""
        with self._lock:
            return self._file(module, build_id)

    def _file(self, module: str, build_id: str | None) -> str | None:
        key = (module, build_id)
        if key not in self._files:
            self._files[key] = self._find_file(module.removesuffix(elf.DELETED), build_id)
        return self._files[key]

    def _find_file(self, path: str, build_id: str | None) -> str | None:
        local = path if path.startswith("/") and os.path.isfile(path) else None
        if local is not None and build_id is not None:
            here = elf.build_id(local)
            if here is not None and here != build_id:
                log.warning("%s is not the file the process ran (build-id %s, not %s): "
                            "looking for its debug information by build-id", local, here,
                            build_id)
                local = None
        if local is not None and elf.has_debug_info(local):
            return local
        wanted = build_id or (elf.build_id(local) if local else None)
        found = self._debug.find(wanted) if wanted else None
        return str(found) if found is not None else local

    def _lookup(self, module: str, address: int) -> list[SourceFrame]:
        backend = self._started()
        try:
            return backend.lookup(module, address)
        except ToolFailed as exc:
            log.warning("%s; symbolizing with pyelftools instead", exc)
            backend.close()
            self._backend = DwarfLines()
            return self._backend.lookup(module, address)

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def __enter__(self) -> Symbolizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Report text -----------------------------------------------------------


def format_frame(index: int, pc: int, symbol: str | None, module: str | None, offset: int | None,
                 sources: Iterable[SourceFrame] = ()) -> list[str]:
    """A frame as report lines; several when calls were inlined into it."""
    where = f"({module}+{offset:#x})" if module is not None and offset is not None else ""
    symbol = demangle_symbol(symbol)
    sources = [s for s in sources if s.function or s.location]
    if symbol and not any(s.location for s in sources):
        named = next((s.function for s in sources if s.function), None)
        # symbol+offset says more than the same bare name; a name that differs is
        # the symbolizer's demangled one (llvm-symbolizer --demangle, addr2line -C),
        # or the function's own where symbol is the nearest exported one (dladdr).
        if named is None or named == symbol.rsplit("+", 1)[0]:
            sources = []
    if not sources:
        return [f" #{index} {pc:#014x} in {symbol or '<unknown>'} {where}".rstrip()]
    lines = []
    for k, src in enumerate(sources):
        name = demangle(src.function) if src.function else symbol or "<unknown>"
        at = f" {src.location}" if src.location else ""
        tail = where if k == len(sources) - 1 else "(inlined)"
        lines.append(f" #{index} {pc:#014x} in {name}{at} {tail}".rstrip())
    return lines


class ReportRewriter:
    """Report text, a line at a time, with every module+offset frame symbolized.

    C++ names are demangled in frames and titles, also without a symbolizer (None).

    Frames are recognised only between the rules of a report.  In a report of
    a fault, frame #0 of the access stack (the one under the "... at 0x...:"
    line) is the faulting instruction; every other frame is a return address.
    build_ids: the build-id of a module by path, when the text came with them.
    """

    def __init__(self, symbolizer: Symbolizer | None,
                 build_ids: Mapping[str, str] | None = None) -> None:
        self.symbolizer = symbolizer
        self.build_ids = build_ids or {}
        self._in_report = self._fault = self._access_stack = False

    def feed(self, line: str) -> list[str]:
        """The lines line becomes (one, or one per inlined frame)."""
        bare = line.rstrip("\n")
        if bare == RULE:
            self._in_report = not self._in_report
            self._fault = self._access_stack = False
            return [line]
        match = FRAME.match(bare) if self._in_report else None
        if match is None:
            if self._in_report and (header := TITLE.match(bare)):
                self._fault = header["kind"] in FAULT_KINDS
                where = header["where"]
                if (readable := demangle_symbol(where)) != where:
                    line = line[:header.start("where")] + str(readable) + line[header.end("where"):]
            elif self._in_report and bare.endswith(":") and not bare.startswith(" "):
                self._access_stack = not bare.startswith(("allocated by", "freed by"))
            return [line]
        index = int(match["index"])
        exact = self._fault and self._access_stack and index == 0
        module, offset = match["module"], int(match["offset"], 16)
        sources = (self.symbolizer.lookup(module, offset, return_address=not exact,
                                          build_id=self.build_ids.get(module))
                   if self.symbolizer else [])
        symbol = None if match["symbol"] == "<unknown>" else match["symbol"]
        newline = "\n" if line.endswith("\n") else ""
        return [out + newline
                for out in format_frame(index, int(match["pc"], 16), symbol, module, offset,
                                        sources)]


def symbolize_lines(lines: Iterable[str], symbolizer: Symbolizer | None,
                    build_ids: Mapping[str, str] | None = None) -> Iterator[str]:
    """Report text with every module+offset frame symbolized; other lines unchanged."""
    rewriter = ReportRewriter(symbolizer, build_ids)
    for line in lines:
        yield from rewriter.feed(line)


def symbolize_text(text: str, symbolizer: Symbolizer | None,
                   build_ids: Mapping[str, str] | None = None) -> str:
    """symbolize_lines() over a whole text."""
    return "".join(symbolize_lines(text.splitlines(keepends=True), symbolizer, build_ids))
