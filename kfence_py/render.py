"""The controller's views of a set of processes: text for people, JSON for tools.

The one renderer: the server, the local client (``kfence-py stats
--state-dir``) and the pytest plugin render with the same functions, so all
print the same thing.  Raw pcs from the state are placed in their modules
through the maps of a process that still runs; the printed reports ``run``
collected carry module+offset even after the process is gone.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ._native import lib
from .contract import BUG_KINDS, CACHE_FAMILIES, CACHES, COUNTERS, DETAILS, FAMILIES
from .demangle import demangle_symbol
from .elf import Module, ModuleTable, Placer, ProcessMaps, build_id, own_symbol
from .governor import last_decision
from .options import OptionSpec, runtime_options
from .protocol import CONFIG, OBJECTS, REPORTS, STATS, document
from .reports import FAULT_KINDS, RULE, Frame, Report, parse_reports, title, title_line
from .sources import Process, Source, Sweep, Unreadable
from .state import STATS_COUNTERS, ObjectInfo, ReportRecord, Stats
from .symbolize import SourceFrame, Symbolizer, format_frame, symbolize_text

Doc = dict[str, Any]


@dataclass
class Snapshot:
    """The processes of a source at one moment."""

    source: str
    processes: list[Process]
    unreadable: list[Unreadable] = field(default_factory=list)

    @classmethod
    def take(cls, source: Source, pid: int | None = None) -> Snapshot:
        processes, unreadable = source.processes(pid)
        return cls(source.describe(), processes, unreadable)

    def _envelope(self, **body: Any) -> Doc:
        return document(source=self.source, **body, unreadable=[
            {"path": str(u.path), "error": u.error} for u in self.unreadable])

    def _trailer(self) -> list[str]:
        return [f"unreadable: {u.error}" for u in self.unreadable]


def _state(p: Process) -> str:
    return "running" if p.running else "exited"


# --- stats -----------------------------------------------------------------


def _setting_name(spec: OptionSpec) -> str:
    return spec.name.replace("_", " ") + (" (ms)" if spec.type == "MS" else "")


def stats_lines(s: Stats) -> list[str]:
    """KFENCE's stats text, one "name: value" per line.

    As KFENCE orders it: the switches (BOOL runtime options), the counters,
    the other runtime options, the pool size.
    """
    specs = runtime_options().values()
    rows = [(_setting_name(spec), s.control[spec.name]) for spec in specs if spec.type == "BOOL"]
    rows += [(counter.name, s.value(counter)) for counter in STATS_COUNTERS]
    rows += [(_setting_name(spec), s.control[spec.name]) for spec in specs if spec.type != "BOOL"]
    rows.append(("pool size", s.pool_size))
    return [f"{name}: {value}" for name, value in rows]


def _summary(s: Stats | None) -> list[Any]:
    """The row of a process (the header for None): each runtime option, each counter without label.

    A counter is headed by its stats name without the "total "/"currently "
    of KFENCE's names ("allocations", "bugs").
    """
    row: list[Any] = [name.replace("_", " ") if s is None else s.control[name]
                      for name in runtime_options()]
    row += [c.name.removeprefix("total ").removeprefix("currently ") if s is None
            else s.counters[c.index] for c in COUNTERS if not c.label]
    return row


def _pool_use(s: Stats) -> float:
    return s.currently_allocated / s.pool_size if s.pool_size else 0.0


def _controller(p: Process) -> Doc | None:
    decision = last_decision(p.state_file)
    return asdict(decision) | {"text": decision.describe()} if decision else None


def stats_doc(snap: Snapshot) -> Doc:
    docs = []
    for p in snap.processes:
        s = p.view.stats()
        docs.append({"pid": p.pid, "running": p.running,
                     "state_file": str(p.state_file) if p.state_file else None,
                     "stats": s.as_dict(), "pool_use": round(_pool_use(s), 4),
                     "controller": _controller(p)})
    return snap._envelope(processes=docs)


def stats_text(snap: Snapshot) -> str:
    """A row per process, then KFENCE's stats text of each."""
    running = sum(p.running for p in snap.processes)
    lines = [f"processes: {len(snap.processes)} ({running} running) in {snap.source}"]
    stats = [(p, p.view.stats()) for p in snap.processes]
    if stats:
        header = _summary(None)
        row = "{:>8}  {:<8}" + "".join(f" {{:>{max(len(h), 5)}}}" for h in header)
        lines.append(row.format("pid", "state", *header))
        for p, s in stats:
            lines.append(row.format(p.pid, _state(p), *_summary(s)))
    for p, s in stats:
        lines += ["", f"pid {p.pid} ({_state(p)}):", *stats_lines(s),
                  f"pool use: {_pool_use(s):.0%}"]
        controller = _controller(p)
        if controller is not None:
            lines.append(f"controller's last change: {controller['text']}")
    lines += snap._trailer()
    return "\n".join(lines) + "\n"


# --- config ----------------------------------------------------------------


def config_doc(snap: Snapshot) -> Doc:
    return snap._envelope(processes=[
        {"pid": p.pid, "running": p.running, **p.control()} for p in snap.processes])


def config_text(snap: Snapshot) -> str:
    lines = []
    for p in snap.processes:
        settings = " ".join(f"{k}={v}" for k, v in p.control().items())
        lines.append(f"pid {p.pid} ({_state(p)}): {settings}")
    if not snap.processes:
        lines.append(f"no process in {snap.source}")
    lines += snap._trailer()
    return "\n".join(lines) + "\n"


# --- frames ----------------------------------------------------------------


def _is_c_library(module: str | None) -> bool:
    return os.path.basename(module or "").startswith(("libc.so", "ld-linux"))


def fold_interpreter(modules: list[str | None], interpreter: frozenset[str]
                     ) -> list[tuple[int, int]]:
    """Index ranges [start, end) of a stack to show as one "... N interpreter frames" line.

    A range is two or more frames in a row in the interpreter's modules; when
    nothing but the interpreter and the C library follows it (the process's or
    the thread's start-up), it runs to the end of the stack.
    """
    ranges = []
    i, n = 0, len(modules)
    while i < n:
        if modules[i] not in interpreter:
            i += 1
            continue
        end = i
        while end < n and modules[end] in interpreter:
            end += 1
        if all(m in interpreter or _is_c_library(m) for m in modules[end:]):
            end = n
        if end - i >= 2:
            ranges.append((i, end))
        i = end
    return ranges


class _Frames:
    """Raw pcs or parsed frames to frame records and text, for one process.

    maps places raw pcs in their modules (the state's module table, then the
    maps of a process that still runs); table gives the build-id and load
    address of the modules that parsed frames name; symbols, when given,
    names the symbol at a raw pc (possible in this process only); the text
    shows runs of frames in the interpreter's modules as one line each (the
    records keep every frame).
    """

    def __init__(self, maps: Placer | None, symbolizer: Symbolizer | None,
                 symbols: Callable[[int], str | None] | None = None,
                 table: ModuleTable | None = None,
                 interpreter: frozenset[str] = frozenset()) -> None:
        self.maps = maps
        self.symbolizer = symbolizer
        self.symbols = symbols
        self.table = table
        self.interpreter = interpreter
        self._modules: dict[str, Doc] = {}  # path: what is known of the module

    def _sources(self, module: str | None, offset: int | None, build_id: str | None,
                 exact: bool) -> list[SourceFrame]:
        if self.symbolizer is None or module is None or offset is None:
            return []
        return self.symbolizer.lookup(module, offset, return_address=not exact,
                                      build_id=build_id)

    def _module(self, path: str | None, placed: Module | None) -> str | None:
        """The build-id of the module at path (placed: where a raw pc put it)."""
        if path is None:
            return None
        if path not in self._modules:
            if placed is None and self.table is not None:
                placed = self.table.by_path(path)
            if placed is not None:
                self._modules[path] = placed.as_dict()
            else:  # a parsed frame the state does not place: the file here, if any
                self._modules[path] = {"path": path, "build_id": build_id(path),
                                       "load_address": None, "start": None, "end": None}
        return self._modules[path]["build_id"]

    def _record(self, index: int, pc: int, symbol: str | None, module: str | None,
                offset: int | None, exact: bool,
                placed: Module | None = None) -> tuple[Doc, list[str]]:
        build = self._module(module, placed)
        sources = self._sources(module, offset, build, exact)
        doc = {"index": index, "pc": pc, "symbol": demangle_symbol(symbol), "module": module,
               "offset": offset, "build_id": build, "source": [s.as_dict() for s in sources]}
        return doc, format_frame(index, pc, symbol, module, offset, sources)

    def from_pcs(self, pcs: tuple[int, ...], *,
                 first_exact: bool = False) -> tuple[list[Doc], list[str]]:
        docs, texts = [], []
        for i, pc in enumerate(pcs):
            placed = self.maps.module_at(pc) if self.maps else None
            module, offset = (placed.path, placed.offset(pc)) if placed else (None, None)
            symbol = self.symbols(pc) if self.symbols else None
            doc, text = self._record(i, pc, symbol, module, offset, first_exact and i == 0,
                                     placed)
            docs.append(doc)
            texts.append(text)
        for start, end in reversed(fold_interpreter([d["module"] for d in docs],
                                                    self.interpreter)):
            texts[start:end] = [[f" ... {end - start} interpreter frames (#{start}..#{end - 1})"]]
        lines = [line for text in texts for line in text]
        return docs, lines or [" (no stack)"]

    def from_parsed(self, frames: list[Frame], *, first_exact: bool = False) -> list[Doc]:
        return [self._record(i, f.pc, f.symbol, f.module, f.module_offset,
                             first_exact and i == 0)[0]
                for i, f in enumerate(frames)]

    def modules(self, doc: Doc) -> list[Doc]:
        """The modules the frames of a record name: path, build-id, load address."""
        stacks = [doc.get("stack") or []]
        stacks += [(doc.get(side) or {}).get("stack") or [] for side in ("allocated", "freed")]
        paths = dict.fromkeys(f["module"] for stack in stacks for f in stack if f["module"])
        return [self._modules[path] for path in paths if path in self._modules]


def _first_function(frames: list[Doc]) -> str | None:
    """The function of the first frame whose source is known, else frame #0's symbol's."""
    for frame in frames:
        for source in frame["source"]:
            if source["function"]:
                return source["function"]
    symbol = frames[0]["symbol"] if frames else None
    return symbol.rsplit("+", 1)[0] if symbol else None


# --- objects ---------------------------------------------------------------


def _object_doc(obj: ObjectInfo, frames: _Frames) -> tuple[Doc, list[str]]:
    alloc_docs, alloc_lines = frames.from_pcs(obj.alloc_stack)
    lines = [f"kfence-#{obj.index}: {obj.address:#x}-{obj.address + max(obj.size, 1) - 1:#x}"
             f", size={obj.size}, cache={obj.cache}, state={obj.state}",
             f"allocated by thread {obj.alloc_thread} at {obj.alloc_time:.6f}s:",
             *alloc_lines, *obj.alloc_python.splitlines()]
    doc = {"index": obj.index, "state": obj.state, "address": obj.address, "size": obj.size,
           "cache": obj.cache,
           "allocated": {"thread": obj.alloc_thread, "time": obj.alloc_time,
                         "stack": alloc_docs, "python": obj.alloc_python or None},
           "freed": None}
    if obj.free_thread is not None:
        free_docs, free_lines = frames.from_pcs(obj.free_stack)
        lines += [f"freed by thread {obj.free_thread} at {obj.free_time:.6f}s:", *free_lines,
                  *obj.free_python.splitlines()]
        doc["freed"] = {"thread": obj.free_thread, "time": obj.free_time, "stack": free_docs,
                        "python": obj.free_python or None}
    return doc, lines


def _objects(snap: Snapshot, symbolizer: Symbolizer | None
             ) -> Iterator[tuple[Process, list[tuple[Doc, list[str]]]]]:
    for p in snap.processes:
        frames = _Frames(p.maps(), symbolizer)
        yield p, [_object_doc(obj, frames) for obj in p.view.objects()]


def objects_doc(snap: Snapshot, symbolizer: Symbolizer | None = None) -> Doc:
    return snap._envelope(objects=[
        {"pid": p.pid, "running": p.running, **doc}
        for p, objs in _objects(snap, symbolizer) for doc, _ in objs])


def objects_text(snap: Snapshot, symbolizer: Symbolizer | None = None) -> str:
    """KFENCE's objects listing, per process."""
    lines = []
    for p, objs in _objects(snap, symbolizer):
        lines.append(f"pid {p.pid} ({_state(p)}): {len(objs)} object(s)")
        for _, text in objs:
            lines += ["", *text]
        lines.append("")
    if not snap.processes:
        lines.append(f"no process in {snap.source}")
    lines += snap._trailer()
    return "\n".join(lines) + "\n"


# --- reports ---------------------------------------------------------------


def report_doc(report: Report, pid: int | None, symbolizer: Symbolizer | None,
               table: ModuleTable | None = None) -> Doc:
    """One printed (parsed) report as a JSON record.

    table: the module table of the process (its state), for the build-id and
    load address of each module; without it, the build-id of the file here.
    """
    frames = _Frames(None, symbolizer, table=table)

    def side(thread: int | None, stack: list[Frame], python: list[str]) -> Doc | None:
        if thread is None:
            return None
        return {"thread": thread, "stack": frames.from_parsed(stack),
                "python": "\n".join(python) or None}

    obj = None
    if report.object_index is not None:
        obj = {"index": report.object_index, "start": report.object_start, "size": report.size,
               "cache": report.cache}
    doc = {"pid": pid, "kind": report.kind, "access": report.access,
           "function": demangle_symbol(report.function), "address": report.address,
           "distance": report.distance, "explanation": report.explanation, "object": obj,
           "stack": frames.from_parsed(report.stack, first_exact=report.kind in FAULT_KINDS),
           "allocated": side(report.alloc_thread, report.alloc_stack, report.alloc_python),
           "freed": side(report.free_thread, report.free_stack, report.free_python),
           "text": report.text}
    doc["modules"] = frames.modules(doc)
    return doc


_OUT_OF_BOUNDS = BUG_KINDS[lib.KFENCE_BUG_OOB].name  # the kind with a distance


def _site(frames: list[Doc], depth: int) -> list[str]:
    """Up to depth frames as "module-basename+offset", the C library's left out."""
    out = []
    for f in frames:
        module = os.path.basename(f["module"] or "?")
        if module.startswith(("libc.so", "ld-linux")):
            continue
        out.append(f"{module}+{f['offset'] if f['offset'] is not None else f['pc']:#x}")
        if len(out) == depth:
            break
    return out


def bucket(doc: Doc) -> str:
    """A signature of a report that is the same in every process and on every machine
    running the same binaries: kind, access, the access site (the first frame outside
    the C library) and the allocation site (three frames), by module and offset."""
    alloc = doc["allocated"]["stack"] if doc.get("allocated") else []
    key = "|".join([doc["kind"], doc["access"] or "", *_site(doc["stack"], 1), "@",
                    *_site(alloc, 3)])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _build_ids(doc: Doc) -> dict[str, str]:
    """The build-id of each module of a record, by path."""
    return {m["path"]: m["build_id"] for m in doc.get("modules") or () if m.get("build_id")}


def symbolize_doc(doc: Doc, symbolizer: Symbolizer) -> Doc:
    """A JSON record (``run --json-reports``, ``reports --json``) with every frame's
    source looked up, by the build-ids it carries, and its text rewritten likewise:
    off the machine that ran it, debug information comes from debuginfod."""
    build_ids = _build_ids(doc)
    fault = doc.get("kind") in FAULT_KINDS
    stacks = [(doc.get("stack") or [], fault)]
    stacks += [((doc.get(side) or {}).get("stack") or [], False)
               for side in ("allocated", "freed")]
    for stack, first_exact in stacks:
        for i, frame in enumerate(stack):
            module, offset = frame.get("module"), frame.get("offset")
            if not module or offset is None:
                continue
            sources = symbolizer.lookup(
                module, offset, return_address=not (first_exact and i == 0),
                build_id=frame.get("build_id") or build_ids.get(module))
            frame["source"] = [s.as_dict() for s in sources]
    if isinstance(doc.get("text"), str):
        doc["text"] = symbolize_text(doc["text"], symbolizer, build_ids)
    if doc.get("function") in (None, "<unknown>") and stacks[0][0]:
        doc["function"] = _first_function(stacks[0][0]) or doc.get("function")
    return doc


def _with_bucket(doc: Doc, repeats: int) -> Doc:
    doc["bucket"] = bucket(doc)
    doc["repeats"] = repeats
    return doc


def _explanation(rec: ReportRecord, maps: Placer | None) -> str | None:
    """The sentence under a recorded report's first line, as the library prints it."""
    detail = DETAILS[rec.detail]
    if not detail.text:
        return None
    # {module}: the detail value of an address in a module's image is an address of its code.
    where = maps.module_at(rec.detail_value) if maps and "{module}" in detail.text else None
    obj = rec.object
    return detail.explain(
        allocator=CACHE_FAMILIES[CACHES.index(obj.cache)].allocator if obj else None,
        deallocator=FAMILIES[rec.dealloc].deallocator, value=rec.detail_value,
        size=obj.size if obj else None, module=where.path if where else None)


def _record_doc(rec: ReportRecord, pid: int, frames: _Frames) -> Doc:
    """A report from the state's ring (raw pcs) as a JSON record, its text under "text"."""
    stack, stack_lines = frames.from_pcs(rec.stack, first_exact=rec.kind in FAULT_KINDS)
    function = _first_function(stack)
    explanation = _explanation(rec, frames.maps)
    lines = [RULE, title_line(rec.kind, rec.access, function or "<unknown>"), "",
             f"{title(rec.kind, rec.access)} at {rec.address:#x} (thread {rec.thread}, "
             f"at {rec.time:.6f}s):", *([explanation] if explanation else []), *stack_lines]
    with_distance = rec.kind == _OUT_OF_BOUNDS or rec.detail == lib.KFENCE_DETAIL_GUARD
    doc: Doc = {"pid": pid, "sequence": rec.sequence, "kind": rec.kind, "access": rec.access,
                "function": function, "address": rec.address,
                "distance": rec.distance if with_distance else None,
                "explanation": explanation,
                "object": None, "stack": stack, "allocated": None, "freed": None}
    if rec.object is not None:
        obj_doc, obj_lines = _object_doc(rec.object, frames)
        doc["object"] = {k: obj_doc[k] for k in ("index", "address", "size", "cache")}
        doc["allocated"], doc["freed"] = obj_doc["allocated"], obj_doc["freed"]
        lines += ["", *obj_lines]
    doc["modules"] = frames.modules(doc)
    _with_bucket(doc, rec.repeats)
    if rec.repeats:
        lines += ["", f"repeated {rec.repeats} more time(s), not printed (bucket {doc['bucket']})"]
    lines += ["", f"pid {pid}, thread {rec.thread}", RULE]
    doc["text"] = "\n".join(lines) + "\n"
    return doc


def _own_interpreter(maps: ProcessMaps | None) -> frozenset[str]:
    """The modules of this process's interpreter: its executable and its libpython, if any."""
    modules = {os.path.realpath(sys.executable)}
    # The C API is in libpython when the interpreter is linked with it, else in the executable.
    api = ctypes.cast(ctypes.pythonapi.Py_IncRef, ctypes.c_void_p).value
    where = maps.resolve(api) if maps is not None and api else None
    if where is not None:
        modules.add(where[0])
    return frozenset(modules)


def own_reports_text(records: Iterable[ReportRecord],
                     symbolizer: Symbolizer | None = None) -> str:
    """Reports of this process's ring as ``kfence-py reports`` prints them (pytest plugin).

    Frames are named by the symbolizer, when given, else by the dynamic symbol
    at each pc; each run of the interpreter's own frames is one line.
    """
    pid = os.getpid()
    maps = ProcessMaps.read(pid)
    frames = _Frames(maps, symbolizer, own_symbol, interpreter=_own_interpreter(maps))
    return "".join(_record_doc(rec, pid, frames)["text"] for rec in records)


def _reports(snap: Snapshot, symbolizer: Symbolizer | None
             ) -> Iterator[tuple[Process, list[tuple[Doc, str]]]]:
    """Per process: (record, text) of each report, from its report file when run kept one."""
    for p in snap.processes:
        if p.report_file is not None:
            try:
                text = p.report_file.read_text(errors="replace")
            except OSError:
                text = None
            if text is not None:
                parsed = parse_reports(text)
                # The ring's record of a printed report holds its repeats.
                repeats: dict[tuple[str, int | None], int] = {
                    (rec.kind, rec.address): rec.repeats for rec in p.view.reports()}
                items = []
                table = p.view.module_table()
                for r in parsed:
                    doc = _with_bucket(report_doc(r, p.pid, symbolizer, table),
                                       repeats.get((r.kind, r.address), 0))
                    text = symbolize_text(r.text, symbolizer, _build_ids(doc))
                    if doc["repeats"]:
                        text += (f"repeated {doc['repeats']} more time(s), not printed "
                                 f"(bucket {doc['bucket']})\n")
                    items.append((doc, text))
                yield p, items
                continue
        frames = _Frames(p.maps(), symbolizer)
        docs = [_record_doc(rec, p.pid, frames) for rec in p.view.reports()]
        yield p, [(doc, doc["text"]) for doc in docs]


def reports_doc(snap: Snapshot, symbolizer: Symbolizer | None = None) -> Doc:
    return snap._envelope(reports=[doc for _, items in _reports(snap, symbolizer)
                                   for doc, _ in items])


def reports_text(snap: Snapshot, symbolizer: Symbolizer | None = None) -> str:
    lines = []
    for p, items in _reports(snap, symbolizer):
        lines.append(f"pid {p.pid} ({_state(p)}): {len(items)} report(s)")
        lines += [text.rstrip("\n") for _, text in items]
        lines.append("")
    if not snap.processes:
        lines.append(f"no process in {snap.source}")
    lines += snap._trailer()
    return "\n".join(lines) + "\n"


def group_reports(docs: Iterable[Doc]) -> list[Doc]:
    """Reports grouped by bucket, most frequent first: how often each bug happened
    (reports and their repeats), in how many processes, and one report to show."""
    groups: dict[str, Doc] = {}
    for doc in docs:
        key = doc.get("bucket") or bucket(doc)
        g = groups.setdefault(key, {"bucket": key, "kind": doc["kind"], "access": doc["access"],
                                     "function": doc["function"], "count": 0, "pids": set(),
                                     "example": doc})
        g["count"] += 1 + (doc.get("repeats") or 0)
        g["pids"].add(doc.get("pid"))
    out = sorted(groups.values(), key=lambda g: (-g["count"], g["bucket"]))
    for g in out:
        g["processes"] = len(g.pop("pids"))
    return out


def groups_text(groups: list[Doc]) -> str:
    lines = [f"{len(groups)} distinct bug(s)"]
    for g in groups:
        lines.append(f"{g['bucket']}  {g['count']:>6} time(s) in {g['processes']} process(es): "
                     f"{title(g['kind'], g['access'])} in {g['function'] or '<unknown>'}")
    return "\n".join(lines) + "\n"


# --- canary checks ---------------------------------------------------------


def check_doc(sweeps: list[Sweep], symbolizer: Symbolizer | None = None) -> Doc:
    """``kfence-py check`` / POST /check as JSON: per process, whether it looked in time,
    how many live objects it has, and the reports of what it found."""
    checks = []
    for s in sweeps:
        frames = _Frames(s.process.maps(), symbolizer)
        live = s.process.view.stats().value(COUNTERS[lib.KFENCE_COUNTER_ALLOCATED])
        checks.append({"pid": s.process.pid, "done": s.done, "live": live,
                       "reports": [_record_doc(rec, s.process.pid, frames)
                                   for rec in s.reports]})
    return document(checks=checks)


def check_text(doc: Doc) -> str:
    """check_doc's document as text."""
    lines = []
    for c in doc["checks"]:
        if not c["done"]:
            lines.append(f"pid {c['pid']}: not checked (it looks at its next sampled "
                         "allocation, and made none in time)")
            continue
        corrupted = sum(1 + r["repeats"] for r in c["reports"])
        lines.append(f"pid {c['pid']}: canaries of {c['live']} live object(s) checked, "
                     f"{corrupted} corrupted")
        lines += [r["text"].rstrip("\n") for r in c["reports"]]
    return "\n".join(lines) + "\n"


# --- every view, by the path the server serves it at ----------------------


@dataclass(frozen=True)
class View:
    doc: Callable[..., Doc]
    text: Callable[..., str]
    symbolized: bool  # takes a Symbolizer after the snapshot

    def render(self, snap: Snapshot, *, as_json: bool,
               symbolizer: Symbolizer | None = None) -> str:
        args = (snap, symbolizer) if self.symbolized else (snap,)
        if as_json:
            return json.dumps(self.doc(*args), indent=1) + "\n"
        return self.text(*args)


VIEWS = {
    STATS: View(stats_doc, stats_text, symbolized=False),
    OBJECTS: View(objects_doc, objects_text, symbolized=True),
    REPORTS: View(reports_doc, reports_text, symbolized=True),
    CONFIG: View(config_doc, config_text, symbolized=False),
}
