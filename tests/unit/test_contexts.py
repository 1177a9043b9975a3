"""The contexts table of csrc/kf_internal.h, checked on the code.

Every function marked KF_SIGSAFE (reachable from the SIGSEGV handler) may
call only other KF_SIGSAFE functions of ours and the async-signal-safe
system functions listed here; the handler itself is marked.  A call to
malloc, stdio, dladdr or a lock from the handler's reach fails this test,
with the path that leads there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
# The library's own sources: everything but the demo program and the CPython glue.
SOURCES = sorted(p for p in CSRC.glob("*.c") if p.name not in {"demo.c", "pyext.c"})
HEADERS = [CSRC / "kf_internal.h"]

# Async-signal-safe per POSIX / signal-safety(7), or a compiler builtin or atomic.
SAFE_SYSTEM = {
    "abort", "clock_gettime", "close", "dup", "fallocate", "fcntl", "fstat", "fsync",
    "ftruncate", "getpid", "gettid", "getrandom", "madvise", "memchr", "memcmp", "memcpy",
    "memmove", "memset", "mkdir", "mmap", "mprotect", "mremap", "munmap", "nanosleep",
    "open", "openat", "poll", "pread", "pwrite", "raise", "read", "readlink", "sched_yield",
    "sigaddset", "sigdelset", "sigemptyset", "sigfillset", "sigismember", "sigorset",
    "pthread_sigmask", "sigprocmask", "syscall", "unlink", "write", "_exit", "strlen",
    "strchr", "strrchr", "strncmp", "strcmp", "strerrordesc_np", "tgkill", "kill",
    "pthread_self", "getauxval", "geteuid", "lseek", "renameat", "rename", "unlinkat",
    "__sigaction", "sigaction", "getrlimit", "fstatat",
}
# Not async-signal-safe by the letter, and why each is all right here.
ACCEPTED = {
    # libgcc's unwinder (_Unwind_Backtrace, _Unwind_GetIP through pointers),
    # loaded and warmed up at the first stack of the process, before any
    # object a fault could be about (kf_unwinder_start; until then the handler
    # records the pc alone): it takes its lock on registered frames, never from
    # its own code (kf_unwind_safe), so a fault can wait on it but not deadlock.
    "kf_gcc_backtrace", "kf_gcc_get_ip",
}
NOT_CALLS = {"if", "else", "for", "while", "switch", "return", "sizeof", "defined",
             "__attribute__", "_Static_assert", "alignof", "typeof", "__builtin_expect",
             "offsetof", "void"}

DEFINITION = re.compile(
    r"^(?P<head>(?:[A-Za-z_][\w ]*?[\s\*]+)+?)(?P<name>[a-z_]\w*)\((?P<args>[^;{]*?)\)"
    r"(?:\s*__attribute__\(\(.*?\)\))?\s*\n\{\n(?P<body>.*?)\n\}\n", re.S | re.M)
CALL = re.compile(r"(?<![\w.>])([a-z_]\w*)\s*\(")


@dataclass
class Function:
    name: str
    where: str
    sigsafe: bool
    calls: set[str]


def functions() -> dict[str, Function]:
    found: dict[str, Function] = {}
    for path in [*HEADERS, *SOURCES]:
        text = path.read_text()
        for m in DEFINITION.finditer(text):
            head = m.group("head")
            if "typedef" in head or head.strip() == "struct":
                continue
            body = re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\])*\"", "", m.group("body"),
                          flags=re.S)
            calls = set(CALL.findall(body)) - NOT_CALLS
            line = text.count("\n", 0, m.start()) + 1
            found[m.group("name")] = Function(m.group("name"), f"{path.name}:{line}",
                                              "KF_SIGSAFE" in head, calls)
    return found


def test_the_handler_is_marked():
    funcs = functions()
    handlers = {name for name, f in funcs.items() if f.sigsafe} & {"kf_handler"}
    assert handlers == {"kf_handler"}, "the SIGSEGV handler must carry KF_SIGSAFE"


def test_sigsafe_functions_call_only_sigsafe_code():
    funcs = functions()
    bad = []
    for f in funcs.values():
        if not f.sigsafe:
            continue
        for callee in sorted(f.calls):
            if callee in funcs:
                if not funcs[callee].sigsafe:
                    bad.append(f"{f.where} {f.name} -> {callee} ({funcs[callee].where}), "
                               "which is not KF_SIGSAFE")
            elif callee not in SAFE_SYSTEM | ACCEPTED and not callee.startswith(
                    ("atomic_", "__atomic_", "__builtin_", "kf_libc_", "va_", "KF_")):
                bad.append(f"{f.where} {f.name} -> {callee}, not known async-signal-safe")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_the_code():
    """A checker that finds nothing would pass anything."""
    funcs = functions()
    assert len(funcs) > 100
    assert {"kf_report_object", "kf_format_report", "kf_describe"} <= {
        n for n, f in funcs.items() if f.sigsafe}
    assert "kf_guarded_alloc" in funcs and not funcs["kf_guarded_alloc"].sigsafe
    assert "kf_capture_stack" in funcs["kf_guarded_alloc"].calls


def test_declarations_carry_the_marker_of_their_definition():
    funcs = functions()
    header = (CSRC / "kf_internal.h").read_text()
    wrong = []
    for m in re.finditer(r"^((?:KF_SIGSAFE )?)KF_HIDDEN [^;(]*?\b([a-z_]\w*)\(", header, re.M):
        f = funcs.get(m.group(2))
        if f and f.sigsafe != bool(m.group(1)):
            wrong.append(f"{m.group(2)}: definition {'is' if f.sigsafe else 'is not'} KF_SIGSAFE")
    assert not wrong, "\n".join(wrong)
