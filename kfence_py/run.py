"""``kfence-py run [options] -- cmd args...``: a command under the preload.

The command runs with LD_PRELOAD=libkfence.so, the options as KFENCE_OPTIONS,
and a private state directory (0700) where every process of the command —
forked children too — publishes ``<pid>.state``.  Its stdin, stdout and
stderr are its own (the terminal stays a terminal); signals sent to kfence-py
are passed on.

Reports are collected through the library's ``report_path`` option, set to
``<state_dir>/report`` (so ``report.<pid>`` files), and tailed, rather than by
reading the command's stderr through a pipe: the command keeps its real
stderr (isatty, ordering with stdout, no stall if kfence-py is slow), the
reports of concurrent processes never interleave (a file each, written in one
write), and a report written just before a crash is on disk whatever becomes
of kfence-py.  Each report is printed symbolized on kfence-py's stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from ._native import LIB_PATH, lib
from .elf import ModuleTable, NotElf, elf_info
from .exitcodes import CliError, ExitCode
from .governor import DEFAULT_BOUNDS, Bounds, Governor
from .options import OptionSpec, format_options, option_specs, split_options
from .protocol import SocketError
from .render import bucket, report_doc
from .reports import RULE, parse_reports
from .retention import KEEP_CLEAN, prune
from .sources import REPORT_PREFIX, DirectorySource
from .state import StateError, StateView
from .symbolize import Symbolizer, symbolize_text

log = logging.getLogger("kfence_py")

# Passed on to the command.  SIGINT, SIGQUIT (and SIGHUP on hang-up) typed at the
# terminal already reach the command, which is in our process group: those are
# not sent twice.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (terminal keys, hang-up)
# The test-suite mode (a sample_rate): a big pool, every free looked at, live objects'
# canaries checked at exit; each unless chosen otherwise (a flag, or KFENCE_OPTIONS).
# Not leak_check: tools a test suite runs (git, compilers) leave memory to exit on purpose,
# and a leak report would turn their exit status into exitcode.
TEST_SUITE_OPTIONS = {"num_objects": "4096", "check_free": "1", "sweep_at_exit": "1"}
POLL_INTERVAL = 0.1  # seconds between looks at the report files
# Python ignores these; the command must start with the default actions.
_RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


# --- options as flags ------------------------------------------------------

# Options with no flag: help=1 prints the table at start-up (KFENCE_OPTIONS=help=1 asks
# for it; `kfence-py options` prints the same), and --help is argparse's.
NO_FLAG = frozenset({"help"})


def _flag(spec: OptionSpec) -> str:
    return "--" + spec.name.replace("_", "-")


def _checker(spec: OptionSpec) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            return spec.normalize(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    check.__name__ = spec.name  # argparse names the type in some messages
    return check


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per entry of the option table: --sample-interval, --halt-on-error, ..."""
    group = parser.add_argument_group(
        "KFENCE options", "each sets the KFENCE_OPTIONS key of the same name; "
        "KFENCE_OPTIONS from the environment applies first")
    for spec in option_specs().values():
        if spec.name in NO_FLAG:
            continue
        kwargs: dict[str, Any] = {"dest": f"option_{spec.name}", "type": _checker(spec),
                                     "default": None}
        default = spec.default or "(empty)"
        if spec.type == "BOOL":
            kwargs.update(nargs="?", const="1", metavar="0|1")
            help_text = f"{spec.description} (default {default}; the flag alone means 1)"
        else:
            kwargs["metavar"] = {"UINT": "N", "MS": "MS", "POW2": "N", "PLACEMENT": "WHERE"}.get(
                spec.type, "PATH")
            help_text = f"{spec.description} (default {default})"
        if spec.name == "state_dir":
            help_text += "; kept after the run (default: a private temporary one)"
        group.add_argument(_flag(spec), help=help_text.replace("%", "%%"), **kwargs)


def options_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The options given as flags, in table order."""
    return {name: value for name in option_specs()
            if (value := getattr(args, f"option_{name}", None)) is not None}


# --- can the preload work? -------------------------------------------------


def resolve_command(name: str) -> Path:
    """The file the kernel will run for name, as execvp() finds it."""
    found = shutil.which(name) if "/" not in name else name
    if found is None or not Path(found).exists():
        raise CliError(f"{name}: command not found", ExitCode.NOT_FOUND)
    path = Path(found)
    if path.is_dir() or not os.access(path, os.X_OK):
        raise CliError(f"{name}: not an executable file", ExitCode.CANNOT_PRELOAD)
    return path


def check_preloadable(path: Path, *, _depth: int = 0) -> None:
    """CliError (CANNOT_PRELOAD) when LD_PRELOAD cannot reach the program at path."""
    st = path.stat()
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        which = "setuid" if st.st_mode & stat.S_ISUID else "setgid"
        raise CliError(
            f"{path} is {which}: the loader ignores LD_PRELOAD for a set-id program run by "
            "another user, and kfence-py does not inject into one; run a copy without "
            "the set-id bit", ExitCode.CANNOT_PRELOAD)
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!") and _depth == 0:
        # A script: the interpreter is the program that gets preloaded.
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            check_preloadable(Path(os.fsdecode(words[0])), _depth=1)
        return
    try:
        info = elf_info(path)
    except NotElf:
        return  # exec decides (and reports) what it is
    ours = elf_info(LIB_PATH)
    if (info.machine, info.elf_class) != (ours.machine, ours.elf_class):
        raise CliError(f"{path} is a {info.elf_class}-bit {info.machine} program; "
                       f"libkfence.so is {ours.elf_class}-bit {ours.machine}: it cannot be "
                       "preloaded", ExitCode.CANNOT_PRELOAD)
    if info.interpreter is None and info.type in ("ET_EXEC", "ET_DYN"):
        raise CliError(f"{path} is statically linked (no program interpreter): LD_PRELOAD "
                       "cannot reach it; link it dynamically to use kfence_py",
                       ExitCode.CANNOT_PRELOAD)


# --- reports ---------------------------------------------------------------


class ReportTailer:
    """Follows ``<prefix>.<pid>`` files and hands each complete report on."""

    def __init__(self, prefix: Path, on_report: Callable[[int, str], None]) -> None:
        self.prefix = prefix
        self.on_report = on_report
        # The library's warnings, said by how many processes: for the summary, not the
        # program's stderr (the library writes them where its reports go).
        self.warnings: Counter[str] = Counter()
        self._name = re.compile(re.escape(prefix.name) + r"\.(\d+)$")
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}  # a line not finished yet
        self._current: dict[Path, list[str] | None] = {}
        for path, _ in self._files():  # files of an earlier run: only what is new
            self._offsets[path] = path.stat().st_size

    def _files(self) -> Iterator[tuple[Path, int]]:
        try:
            names = os.listdir(self.prefix.parent)
        except OSError:
            return
        for name in sorted(names):
            if m := self._name.match(name):
                yield self.prefix.parent / name, int(m[1])

    def poll(self) -> None:
        for path, pid in self._files():
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self._offsets[path] = self._offsets.get(path, 0) + len(data)
            *lines, self._partial[path] = (self._partial.get(path, b"") + data).split(b"\n")
            for line in lines:
                self._line(path, pid, line.decode(errors="replace"))

    def _line(self, path: Path, pid: int, line: str) -> None:
        current = self._current.get(path)
        if line == RULE:
            if current is None:
                self._current[path] = [line]
            else:
                self._current[path] = None
                self.on_report(pid, "\n".join([*current, line]) + "\n")
        elif current is not None:
            current.append(line)
        elif line.startswith("kfence: "):
            self.warnings[line] += 1
        else:
            sys.stderr.write(line + "\n")  # not a report: pass it on as it is

    def finish(self) -> None:
        """Read what is left; a report cut short is printed as it is."""
        self.poll()
        for path, current in self._current.items():
            if current:
                rest = self._partial.get(path, b"").decode(errors="replace")
                sys.stderr.write("\n".join(current) + "\n" + rest)
        self._current.clear()


class ReportPrinter:
    """Prints each report symbolized and writes its JSON record.

    The module table of the process's state (in state_dir) gives each
    record the build-id and load address of its modules.
    """

    def __init__(self, symbolizer: Symbolizer | None, json_out: IO[str] | None,
                 state_dir: Path | None = None) -> None:
        self.symbolizer = symbolizer
        self.json_out = json_out
        self.state_dir = state_dir
        self.printed = 0

    def _modules(self, pid: int) -> ModuleTable | None:
        if self.state_dir is None:
            return None
        try:
            return StateView.open(self.state_dir / f"{pid}.state").module_table()
        except StateError as exc:
            log.debug("no module table for pid %d: %s", pid, exc)
            return None

    def __call__(self, pid: int, text: str) -> None:
        self.printed += 1
        table = self._modules(pid)
        build_ids = {m.path: m.build_id for m in table.modules if m.build_id} if table else {}
        shown = symbolize_text(text, self.symbolizer, build_ids)
        sys.stderr.write(shown)
        sys.stderr.flush()
        if self.json_out is not None:
            for report in parse_reports(text):
                record = report_doc(report, pid, self.symbolizer, table)
                record["bucket"] = bucket(record)
                self.json_out.write(json.dumps(record) + "\n")
            self.json_out.flush()


# --- running ---------------------------------------------------------------


def private_state_dir(path: Path) -> None:
    """Create path (0700), or check it is what the library publishes into: CliError if not.

    The library lstat()s the directory and wants a real directory of this user
    with mode 0700; the same rule here turns its warning at the start of every
    process into one clear refusal before anything runs.  A symbolic link is
    refused, not resolved: the library does not follow one, so that no one can
    move where a process publishes its stacks by changing a link, and a path
    resolved here once could point elsewhere by the time a later process (a
    forked child) starts.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CliError(f"state directory {path}: {exc.strerror}", ExitCode.RUN_FAILED) from None
    else:
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise CliError(f"state directory {path}: {exc.strerror}", ExitCode.RUN_FAILED) from None
    if stat.S_ISLNK(st.st_mode):
        raise CliError(f"state directory {path} is a symbolic link (to "
                       f"{os.path.realpath(path)}); the library publishes only into a real "
                       "directory: give the directory itself", ExitCode.RUN_FAILED)
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"state directory {path} exists and is not a directory",
                       ExitCode.RUN_FAILED)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise CliError(f"state directory {path} must be yours with mode 0700 (the library "
                       f"will not publish elsewhere); it is {stat.S_IMODE(st.st_mode):04o} "
                       f"of uid {st.st_uid}", ExitCode.RUN_FAILED)


def _identities(state_dir: Path) -> dict[Path, tuple[int, int, int]]:
    """Which process wrote each state file now: (inode, start times)."""
    out = {}
    for _, path in DirectorySource(state_dir).state_files():
        try:
            inode = path.stat(follow_symlinks=False).st_ino
            view = StateView.open(path)
        except (OSError, StateError):
            continue
        out[path] = (inode, int(view.header.start_realtime_ns), int(view.header.start_ns))
    return out


def summary(state_dir: Path, before: dict[Path, tuple[int, int, int]], printed: int,
            warnings: Counter[str]) -> str:
    """What this run checked and what it did not, in a few lines for its end.

    Over the processes of this run (the state files written since it began):
    guarded allocations, bugs (printed, and repeats counted but not printed),
    skipped allocations by reason, a hint when the pool was the limit, and
    each warning of the library once, with how many processes said it.
    """
    processes = guarded = bugs = repeated = 0
    skipped: Counter[str] = Counter()
    pool = 0
    for path, identity in _identities(state_dir).items():
        if before.get(path) == identity:
            continue
        try:
            s = StateView.open(path).stats()
        except StateError:
            continue
        processes += 1
        guarded += s.total_allocations
        bugs += s.total_bugs
        repeated += s.repeated_bugs
        skipped.update(s.skipped)
        pool = max(pool, s.pool_size)
    lines = [f"{processes} process(es), {guarded} guarded allocation(s), {bugs} bug(s)"
             + (f" ({printed} printed, {repeated} repeat(s) counted)" if bugs else "")]
    if +skipped:
        lines.append("skipped allocations: " + ", ".join(
            f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.most_common() if n))
    if skipped["capacity"]:
        lines.append(f"hint: the pool ({pool} slots) was full {skipped['capacity']} time(s); "
                     "--num-objects guards more at once")
    lines += [f"{w}" + (f" (in {n} processes)" if n > 1 else "") for w, n in warnings.items()]
    return "".join(f"kfence-py: {line}\n" for line in lines)


def effective_option(kfence_options: str, name: str) -> str:
    """The value of option name the library takes from a KFENCE_OPTIONS text (last wins)."""
    spec = option_specs()[name]
    value = spec.default
    for item in split_options(kfence_options):
        if item.status == lib.KFENCE_ITEM_OK and item.key == name:
            with suppress(ValueError):  # the library warns and keeps what it had
                value = spec.normalize(item.value)
    return value


@contextmanager
def _signals_blocked(signals: tuple[int, ...]) -> Iterator[None]:
    """Block signals in this thread (and threads started after): sigtimedwait takes them."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        # Anything still pending for us goes with the mask; nothing is left to forward to.
        while signal.sigtimedwait(signals, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_status(wait_status: int) -> int:
    """The command's exit status; 128+N when signal N ended it (the shell's way)."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Runner:
    """One ``kfence-py run``."""

    def __init__(self, command: list[str], options: dict[str, str], *,
                 socket_path: str | None = None, json_reports: Path | None = None,
                 symbolizer: str | None = "auto", keep_clean: int = KEEP_CLEAN,
                 bounds: Bounds | None = DEFAULT_BOUNDS) -> None:
        if not command:
            raise CliError("no command: kfence-py run [options] -- command args...",
                           ExitCode.USAGE)
        self.command = command
        self.options = dict(options)
        self.socket_path = socket_path
        self.json_reports = json_reports
        self.symbolizer_name = symbolizer
        self.keep_clean = keep_clean
        self.bounds = bounds  # None: the gate is left as the options set it

    def environment(self, state_dir: Path, report_prefix: Path) -> dict[str, str]:
        """The command's environment: LD_PRELOAD, and KFENCE_OPTIONS with ours last."""
        env = dict(os.environ)
        managed = {**self.options, "state_dir": str(state_dir),
                   "report_path": str(report_prefix)}
        inherited = env.get("KFENCE_OPTIONS", "")
        rate = self.options.get("sample_rate") or effective_option(inherited, "sample_rate")
        if rate != "0":
            given = {*self.options, *(item.key for item in split_options(inherited))}
            managed = {**{k: v for k, v in TEST_SUITE_OPTIONS.items() if k not in given},
                       **managed}
        try:
            ours = format_options(managed)
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.RUN_FAILED) from None
        # The environment's KFENCE_OPTIONS first: later keys win in the parser.
        env["KFENCE_OPTIONS"] = ":".join(filter(None, [env.get("KFENCE_OPTIONS", ""), ours]))
        if any(c in str(LIB_PATH) for c in " :"):
            raise CliError(f"{LIB_PATH}: LD_PRELOAD cannot name a path with ' ' or ':'",
                           ExitCode.RUN_FAILED)
        env["LD_PRELOAD"] = " ".join(filter(None, [str(LIB_PATH), env.get("LD_PRELOAD", "")]))
        return env

    def run(self) -> int:
        program = resolve_command(self.command[0])
        check_preloadable(program)
        with ExitStack() as stack:
            if self.options.get("state_dir"):
                state_dir = Path(self.options["state_dir"])  # the user's: kept
            else:
                state_dir = Path(tempfile.mkdtemp(prefix="kfence-py-"))
                stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
            private_state_dir(state_dir)
            report_prefix = Path(self.options.get("report_path") or state_dir / REPORT_PREFIX)
            env = self.environment(state_dir, report_prefix)

            symbolizer = Symbolizer(self.symbolizer_name) if self.symbolizer_name else None
            if symbolizer is not None:
                stack.callback(symbolizer.close)
            json_out = None
            if self.json_reports is not None:
                try:
                    json_out = stack.enter_context(open(self.json_reports, "a"))
                except OSError as exc:
                    raise CliError(f"{self.json_reports}: {exc.strerror}",
                                   ExitCode.RUN_FAILED) from None
            printer = ReportPrinter(symbolizer, json_out, state_dir)
            tailer = ReportTailer(report_prefix, printer)

            # Blocked before any thread starts, so that every thread inherits it.
            stack.enter_context(_signals_blocked((*FORWARDED, signal.SIGCHLD)))
            if self.socket_path is not None:
                from .server import StatsServer  # the server's imports only for --socket

                try:
                    server = StatsServer(self.socket_path,
                                         DirectorySource(state_dir, report_prefix),
                                         symbolizer=symbolizer)
                except SocketError as exc:
                    raise CliError(str(exc), ExitCode.RUN_FAILED) from None
                stack.enter_context(server.start())
                log.info("statistics on %s", server.path)
            before = _identities(state_dir)
            governor = (Governor(DirectorySource(state_dir, report_prefix), self.bounds)
                        if self.bounds is not None else None)
            pid = self._spawn(program, env)
            status = self._wait(pid, tailer, governor)
            tailer.finish()
            sys.stderr.write(summary(state_dir, before, printer.printed, tailer.warnings))
            if not (state_dir / f"{pid}.state").exists() and self.options.get("enabled") != "0":
                log.warning("%s published no state in %s: the library kept it private "
                            "(see its kfence: warning) or did not start (was LD_PRELOAD "
                            "dropped on the way?)", self.command[0], state_dir)
            status = self._status_with_bugs(status, state_dir, before,
                                            int(effective_option(env["KFENCE_OPTIONS"],
                                                                 "exitcode")))
            if self.options.get("state_dir"):
                try:
                    prune(state_dir, self.keep_clean)
                except (OSError, StateError) as exc:
                    log.warning("cannot prune %s: %s", state_dir, exc)
            return status

    def _status_with_bugs(self, status: int, state_dir: Path,
                          before: dict[Path, tuple[int, int, int]], exitcode: int) -> int:
        """exitcode when the command exited 0 but one of its processes reported a bug.

        The library sets the exit status itself when a process returns from
        main() or calls exit(); a process that ends with _exit(), or a Go
        program, leaves only its state to say so.  The processes of this run
        are the state files written since it started (a state directory may
        hold files of earlier runs).
        """
        if status != 0 or exitcode == 0:
            return status
        buggy = []
        for path, identity in _identities(state_dir).items():
            if before.get(path) == identity:
                continue
            try:
                bugs = StateView.open(path).counter(lib.KFENCE_COUNTER_BUGS)
            except StateError as exc:
                log.warning("cannot read %s", exc)
                continue
            if bugs:
                buggy.append(path.stem)
        if not buggy:
            return status
        log.warning("%s exited 0, but bugs were reported in pid %s: exit status %d "
                    "(the exitcode option)", self.command[0], ", ".join(sorted(buggy)),
                    exitcode)
        return exitcode

    def _spawn(self, program: Path, env: dict[str, str]) -> int:
        try:
            pid = os.posix_spawn(program, self.command, env, setsigmask=(),
                                 setsigdef=_RESTORED)
        except OSError as exc:
            raise CliError(f"{self.command[0]}: cannot execute: {exc.strerror}",
                           ExitCode.CANNOT_PRELOAD) from None
        log.info("started %s as pid %d", self.command[0], pid)
        return pid

    def _wait(self, pid: int, tailer: ReportTailer, governor: Governor | None) -> int:
        """Pass signals on and print reports until the command ends; its exit status."""
        while True:
            info = signal.sigtimedwait((*FORWARDED, signal.SIGCHLD), POLL_INTERVAL)
            if info is not None and info.si_signo != signal.SIGCHLD:
                if info.si_code == SI_KERNEL:
                    log.debug("signal %d came from the terminal: the command has it too",
                              info.si_signo)
                else:
                    log.debug("passing signal %d on to pid %d", info.si_signo, pid)
                    with suppress(ProcessLookupError):
                        os.kill(pid, info.si_signo)
            tailer.poll()
            if governor is not None:
                governor.poll()
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                return exit_status(wait_status)
