"""The kfence-py command line.  Each subcommand is a small class with
``prepare_parser()`` and ``run()``; ``main()`` returns the exit status."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar
from urllib.parse import urlencode

from . import __version__, protocol, render
from ._native import DEMO_PATH, LIB_PATH
from .client import request
from .debuginfo import DebugFiles
from .exitcodes import CliError, ExitCode
from .governor import Bounds
from .options import OptionSpec, format_options, markdown_table, option_specs, runtime_options
from .protocol import MAX_CLIENTS, MAX_CLIENTS_LIMIT, SocketError
from .reports import parse_reports
from .retention import KEEP_CLEAN
from .run import Runner, add_option_flags, options_from_args
from .sources import (
    SWEEP_WAIT,
    ConfigError,
    DirectorySource,
    FileSource,
    NoRunningProcess,
    Source,
    StateNotFound,
    apply_changes,
    sweep,
)
from .state import StateError, StatePermissionError, StateVersionError
from .symbolize import BACKENDS, ReportRewriter, Symbolizer

log = logging.getLogger("kfence_py")


class Command:
    name: ClassVar[str]
    help: ClassVar[str]

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class LibPathCommand(Command):
    name = "lib-path"
    help = "print the absolute path of libkfence.so, for LD_PRELOAD"

    def run(self, args: argparse.Namespace) -> int:
        print(LIB_PATH)
        return ExitCode.OK


class OptionsCommand(Command):
    name = "options"
    help = "list the KFENCE_OPTIONS the library understands"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--markdown", action="store_true",
                            help="print README's option table")

    def run(self, args: argparse.Namespace) -> int:
        if args.markdown:
            sys.stdout.write(markdown_table())
            return ExitCode.OK
        for spec in option_specs().values():
            print(f"{spec.name}={spec.default}\n    {spec.description}")
        return ExitCode.OK


class DemoCommand(Command):
    name = "demo"
    help = "run a small buggy C program under the preload and show its reports"
    DEMO_OPTIONS: ClassVar[dict[str, object]] = {"sample_rate": 1, "placement": "right"}

    def run(self, args: argparse.Namespace) -> int:
        options = format_options(self.DEMO_OPTIONS)
        print(f"$ KFENCE_OPTIONS={options} LD_PRELOAD={LIB_PATH} {DEMO_PATH}", flush=True)
        env = {**os.environ, "LD_PRELOAD": str(LIB_PATH), "KFENCE_OPTIONS": options}
        proc = subprocess.run([str(DEMO_PATH)], env=env, stderr=subprocess.PIPE, text=True,
                              check=False)
        sys.stderr.write(proc.stderr)
        reports = parse_reports(proc.stderr)
        exitcode = int(option_specs()["exitcode"].default)
        print(f"\nkfence-demo exited with status {proc.returncode}; "
              f"{len(reports)} bug(s) reported:")
        for report in reports:
            what = f"{report.kind} {report.access}" if report.access else report.kind
            print(f"  - {what} in {report.function}() on kfence-#{report.object_index}")
        if reports and proc.returncode == exitcode:
            print(f"(the exit status is {exitcode}, the exitcode option, "
                  "because bugs were reported)")
            return ExitCode.OK
        return ExitCode.FAILURE


class RunCommand(Command):
    name = "run"
    help = "run a command under the preload: symbolized reports, statistics socket"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        specs = option_specs()
        parser.usage = "%(prog)s [options] -- command [args...]"
        parser.add_argument("--socket", metavar="PATH",
                            help="serve statistics over HTTP on this Unix socket while it runs")
        parser.add_argument("--json-reports", metavar="FILE", type=Path,
                            help="append one JSON record per report to FILE")
        _keep_clean_argument(parser, "to --state-dir when the command ends")
        _symbolizer_arguments(parser)
        gate = parser.add_argument_group(
            "the controller's hand on the gate: while a pool is nearly full, fewer samples "
            "(a larger sample_rate or sample_interval), back to the options' once it has room")
        gate.add_argument("--no-adapt", dest="adapt", action="store_false",
                          help="leave sample_rate and sample_interval as the options set them")
        gate.add_argument("--max-sample-rate", type=_option_range(specs["sample_rate"]),
                          metavar="N",
                          default=Bounds.max_sample_rate,
                          help="widen sample_rate up to N (default: %(default)s)")
        gate.add_argument("--max-sample-interval", metavar="MS",
                          type=_option_range(specs["sample_interval"]),
                          default=Bounds.max_sample_interval,
                          help="widen sample_interval up to MS (default: %(default)s)")
        add_option_flags(parser)
        parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="command",
                            help="the command and its arguments, after --")

    def run(self, args: argparse.Namespace) -> int:
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        runner = Runner(command, options_from_args(args), socket_path=args.socket,
                        json_reports=args.json_reports, keep_clean=args.keep_clean,
                        symbolizer=None if args.no_symbolize else args.symbolizer,
                        bounds=Bounds(args.max_sample_rate, args.max_sample_interval)
                        if args.adapt else None)
        return runner.run()


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a count (0 or more), not {text!r}")
    return int(text)


def _int_in(low: int, high: int, what: str = "an integer",
            unit: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in low..high, the range named when refused."""
    def check(text: str) -> int:
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"expected {what} in {low}..{high}{unit}, not {text!r}")
        return int(text)
    check.__name__ = what  # argparse names the type in some messages
    return check


def _option_range(spec: OptionSpec) -> Callable[[str], int]:
    """The range of a flag that bounds an option: the option table's (csrc/options.inc)."""
    return _int_in(spec.minimum, spec.maximum, unit=" ms" if spec.type == "MS" else "")


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 4194304  # the kernel's PID_MAX_LIMIT on 64-bit


def _keep_clean_argument(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument(
        "--keep-clean", type=_count, default=KEEP_CLEAN, metavar="N",
        help=f"state files of exited processes that reported no bug kept in the state "
        f"directory, newest first (default {KEEP_CLEAN}); the files of running processes, "
        f"of processes that reported bugs and unreadable ones are always kept; "
        f"applied {when}")


def _symbolizer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbolizer", choices=BACKENDS, default="auto",
                        help="how frames become file:line (default: llvm-symbolizer, else "
                        "addr2line, else DWARF read with pyelftools)")
    parser.add_argument("--no-symbolize", action="store_true",
                        help="leave frames as module+offset")


class ServeCommand(Command):
    name = "serve"
    help = "serve the statistics of every process in a state directory on a Unix socket"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state-dir", metavar="DIR", required=True, type=Path,
                            help="the state_dir the processes were started with")
        parser.add_argument("--socket", metavar="PATH", required=True,
                            help="the Unix socket to create (in a private 0700 directory)")
        parser.add_argument("--max-clients", type=_int_in(1, MAX_CLIENTS_LIMIT),
                            default=MAX_CLIENTS, metavar="N",
                            help=f"connections served at once (default {MAX_CLIENTS})")
        _keep_clean_argument(parser, "at start and then every minute")
        _symbolizer_arguments(parser)
        fleet = parser.add_argument_group("for node_exporter's textfile collector")
        fleet.add_argument("--textfile-dir", metavar="DIR", type=Path,
                           help="write the metrics to DIR/kfence.prom (whole: written under "
                           "another name, then renamed) now and every --textfile-interval; "
                           "DIR is node_exporter's --collector.textfile.directory")
        fleet.add_argument("--textfile-interval", metavar="SECONDS", type=_interval,
                           default=TEXTFILE_INTERVAL,
                           help=f"seconds between writes (default {TEXTFILE_INTERVAL:g})")

    def run(self, args: argparse.Namespace) -> int:
        from .metrics import write_textfile
        from .server import StatsServer  # the server's imports only for the server

        if not args.state_dir.is_dir():
            raise CliError(f"{args.state_dir}: no such state directory", ExitCode.NO_SERVER)
        if args.textfile_dir is not None and not args.textfile_dir.is_dir():
            raise CliError(f"--textfile-dir {args.textfile_dir}: no such directory",
                           ExitCode.USAGE)
        stop = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        # Blocked before the server's threads start, so that only sigwait() takes them.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            symbolizer = None if args.no_symbolize else Symbolizer(args.symbolizer)
            try:
                server = StatsServer(args.socket, DirectorySource(args.state_dir),
                                     symbolizer=symbolizer, max_clients=args.max_clients,
                                     keep_clean=args.keep_clean)
            except SocketError as exc:
                raise CliError(str(exc), ExitCode.RUN_FAILED) from None
            with server.start():
                print(f"kfence-py: serving {args.state_dir} on {server.path}", file=sys.stderr,
                      flush=True)
                if args.textfile_dir is None:
                    signo = signal.sigwait(stop)
                else:
                    signo = _write_textfiles(args.textfile_dir, args.textfile_interval, stop,
                                             lambda d: write_textfile(d, server.registry))
                log.info("stopping on signal %d", signo)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return ExitCode.OK


TEXTFILE_INTERVAL = 15.0  # seconds: node_exporter is scraped every 15 s to 1 min


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds from 1 to 3600, not {text!r}")
    return value


def _write_textfiles(directory: Path, interval: float, stop: tuple[signal.Signals, ...],
                     write: Callable[[Path], Path]) -> int:
    """Write the textfile now and every interval until a stop signal; that signal.

    A failed write (a full disk) is said and tried again next time; on the way
    out the file is removed, so node_exporter does not serve a stopped host's
    last numbers as current."""
    written: Path | None = None
    try:
        while True:
            try:
                written = write(directory)
            except OSError as exc:
                log.warning("cannot write the metrics in %s: %s", directory, exc.strerror)
            info = signal.sigtimedwait(stop, interval)
            if info is not None:
                return info.si_signo
    finally:
        if written is not None:
            with suppress(FileNotFoundError):
                written.unlink()


class _ViewCommand(Command):
    """stats, objects, reports: from a socket, a pid's state file or a state directory."""

    endpoint: ClassVar[str]

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        _source_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace) -> int:
        if args.socket:
            query = protocol.query(as_json=args.json, pid=args.pid)
            sys.stdout.write(request(args.socket, "GET", self.endpoint, query=query).text)
            return ExitCode.OK
        snap = render.Snapshot.take(_local_source(args))
        sys.stdout.write(_local_view(self.endpoint, snap, args.json))
        return ExitCode.OK


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the state is (one of --socket, --pid, --state-dir)")
    where.add_argument("--socket", metavar="PATH", help="ask the server on this Unix socket")
    where.add_argument("--pid", type=_int_in(1, _pid_max(), "a process id"), metavar="N",
                       help="read the state file of process N (found in --state-dir, or "
                       "in its memory maps while it runs)")
    where.add_argument("--state-dir", metavar="DIR", type=Path,
                       help="read every state file in DIR")


def _local_source(args: argparse.Namespace) -> Source:
    if args.pid is not None:
        return _state_call(FileSource, args.pid, args.state_dir)
    if args.state_dir is not None:
        source = DirectorySource(args.state_dir)
        _state_call(source.state_files)
        return source
    raise CliError("say where the state is: --socket PATH, --pid N or --state-dir DIR",
                   ExitCode.USAGE)


T = TypeVar("T")


def _state_call(fn: Callable[..., T], *args: object) -> T:
    """fn(*args), with state errors turned into plain messages and exit codes."""
    try:
        return fn(*args)
    except StateVersionError as exc:
        raise CliError(str(exc), ExitCode.VERSION_MISMATCH) from None
    except StateNotFound as exc:
        raise CliError(str(exc), ExitCode.NO_SERVER) from None
    except StatePermissionError as exc:
        raise CliError(str(exc), ExitCode.PERMISSION) from None
    except StateError as exc:
        raise CliError(str(exc), ExitCode.BAD_STATE) from None


def _local_view(endpoint: str, snap: render.Snapshot, as_json: bool) -> str:
    view = render.VIEWS[endpoint]
    if not view.symbolized:
        return view.render(snap, as_json=as_json)
    with Symbolizer() as symbolizer:
        return view.render(snap, as_json=as_json, symbolizer=symbolizer)


class StatsCommand(_ViewCommand):
    name = "stats"
    help = "KFENCE's statistics of one or more processes"
    endpoint = protocol.STATS


class ObjectsCommand(_ViewCommand):
    name = "objects"
    help = "the guarded objects of one or more processes, with their stacks"
    endpoint = protocol.OBJECTS


class ReportsCommand(_ViewCommand):
    name = "reports"
    help = "the reports of one or more processes, symbolized"
    endpoint = protocol.REPORTS

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        super().prepare_parser(parser)
        parser.add_argument("--group", action="store_true",
                            help="one line per distinct bug (its bucket), with how often it "
                            "happened and in how many processes")
        parser.add_argument("files", nargs="*", type=Path, metavar="JSONL",
                            help="with --group: JSON-lines report files (run --json-reports) "
                            "instead of a state")

    def run(self, args: argparse.Namespace) -> int:
        if not args.group:
            if args.files:
                raise CliError("report files are read with --group", ExitCode.USAGE)
            return super().run(args)
        if args.files:
            docs = list(_jsonl_reports(args.files))
        elif args.socket:
            query = protocol.query(as_json=True, pid=args.pid)
            docs = json.loads(request(args.socket, "GET", self.endpoint, query=query).text
                              )["reports"]
        else:
            snap = render.Snapshot.take(_local_source(args))
            with Symbolizer() as symbolizer:
                docs = render.reports_doc(snap, symbolizer)["reports"]
        groups = render.group_reports(docs)
        if args.json:
            sys.stdout.write(json.dumps({"groups": groups}, indent=1) + "\n")
        else:
            sys.stdout.write(render.groups_text(groups))
        return ExitCode.OK


def _jsonl_reports(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror}", ExitCode.USAGE) from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                raise CliError(f"{path}:{n}: not a JSON record", ExitCode.USAGE) from None
            if not isinstance(doc, dict) or "kind" not in doc or "stack" not in doc:
                raise CliError(f"{path}:{n}: not a kfence_py report record", ExitCode.USAGE)
            yield doc


class ConfigCommand(Command):
    name = "config"
    help = "show or change sampling while processes run (enabled, sample_interval, ...)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        _source_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")
        *names, last = runtime_options()
        parser.add_argument("changes", nargs="*", metavar="KEY=VALUE",
                            help=f"{', '.join(names)} or {last}; none: show the settings")

    def run(self, args: argparse.Namespace) -> int:
        changes = {}
        for item in args.changes:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"expected KEY=VALUE, not {item!r}", ExitCode.USAGE)
            changes[key] = value
        if args.socket:
            query = protocol.query(as_json=args.json, pid=args.pid)
            if changes:
                reply = request(args.socket, "POST", protocol.CONFIG, query=query,
                                body=urlencode(changes).encode())
            else:
                reply = request(args.socket, "GET", protocol.CONFIG, query=query)
            sys.stdout.write(reply.text)
            return ExitCode.OK
        source = _local_source(args)
        if changes:
            try:
                _state_call(apply_changes, source, changes, args.pid)
            except NoRunningProcess as exc:
                raise CliError(str(exc), ExitCode.NO_SERVER) from None
            except ConfigError as exc:
                raise CliError(str(exc), ExitCode.USAGE) from None
        snap = _state_call(render.Snapshot.take, source)
        sys.stdout.write(_local_view(protocol.CONFIG, snap, args.json))
        return ExitCode.OK


class CheckCommand(Command):
    name = "check"
    help = "have running processes check the canaries of their live objects now"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        _source_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--wait", type=float, default=SWEEP_WAIT, metavar="S",
                            help="seconds to wait for the processes (default: %(default)s)")

    def run(self, args: argparse.Namespace) -> int:
        if args.socket:
            query = protocol.query(as_json=True, pid=args.pid)
            doc = request(args.socket, "POST", protocol.CHECK, query=query, body=b"").json()
        else:
            source = _local_source(args)
            try:
                sweeps = _state_call(sweep, source, args.pid, args.wait)
            except NoRunningProcess as exc:
                raise CliError(str(exc), ExitCode.NO_SERVER) from None
            with Symbolizer() as symbolizer:
                doc = render.check_doc(sweeps, symbolizer)
        sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.json
                         else render.check_text(doc))
        checks = doc.get("checks", [])
        if any(c["reports"] for c in checks):
            return ExitCode.CORRUPTED
        return ExitCode.OK if all(c["done"] for c in checks) else ExitCode.NOT_CHECKED


class SymbolizeCommand(Command):
    name = "symbolize"
    help = ("rewrite reports read from stdin (or files) with function, file:line frames; "
            "JSON-lines records (run --json-reports) come out as records, symbolized by the "
            "build-ids they carry")

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                            help="report text or JSON records to read (default: stdin)")
        parser.add_argument("--symbolizer", choices=BACKENDS, default="auto",
                            help="llvm-symbolizer, addr2line or DWARF read with pyelftools "
                            "(default: the first installed, or the one KFENCE_SYMBOLIZER_PATH "
                            "or LLVM_SYMBOLIZER_PATH names)")
        parser.add_argument("--debug-file-directory", metavar="DIR", type=Path,
                            action="append", dest="debug_dirs",
                            help="look for debug files by build-id in DIR/.build-id/ "
                            "(repeatable; default /usr/lib/debug); then debuginfod, when "
                            "DEBUGINFOD_URLS is set")

    def run(self, args: argparse.Namespace) -> int:
        debug_files = DebugFiles.from_environment(args.debug_dirs)
        with Symbolizer(args.symbolizer, debug_files=debug_files) as symbolizer:
            rewriter = ReportRewriter(symbolizer)
            for line in _input_lines(args.files):
                record = _json_record(line)
                if record is not None:
                    out = [json.dumps(render.symbolize_doc(record, symbolizer)) + "\n"]
                else:
                    out = rewriter.feed(line)
                sys.stdout.writelines(out)
                sys.stdout.flush()  # a report piped in as it happens comes out at once
        return ExitCode.OK


def _json_record(line: str) -> dict[str, Any] | None:
    """A report record of a JSON-lines file, or None for a line of text."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and "kind" in doc and "stack" in doc else None


def _input_lines(paths: list[Path]) -> Iterator[str]:
    if not paths:
        yield from sys.stdin
    for path in paths:
        try:
            f = open(path, errors="replace")  # noqa: SIM115 (closed below; open errors only)
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror}", ExitCode.NO_SERVER) from None
        with f:
            yield from f


COMMANDS: tuple[type[Command], ...] = (
    CheckCommand, ConfigCommand, DemoCommand, LibPathCommand, ObjectsCommand, OptionsCommand,
    ReportsCommand, RunCommand, ServeCommand, StatsCommand, SymbolizeCommand)


def close_flags(unknown: str, known: Iterable[str]) -> list[str]:
    """The known option strings that a misspelled flag (``--sample_rate=1``) may have meant."""
    name = unknown.partition("=")[0]
    if not name.startswith("-"):
        return []
    known = sorted(set(known))
    dashed = name.replace("_", "-")
    if dashed != name and dashed in known:
        return [dashed]
    long_only = [k for k in known if k.startswith("--")] if name.startswith("--") else known
    return difflib.get_close_matches(name, long_only, n=1, cutoff=0.6)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with a hint for a misspelled flag (Python 3.11's has no suggest_on_error)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, ArgumentParser] = {}  # the subcommands' parsers, by name

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        """parse_args, with a close-match hint for each unknown flag, in its command's usage."""
        argv = sys.argv[1:] if argv is None else argv
        args, extras = self.parse_known_args(argv)
        if extras:
            name = getattr(args, "command", None) or ""
            command = self.commands.get(name)
            # Unknown flags after the command name are the command's to explain.
            after = argv[argv.index(name) + 1:] if name in argv else []
            if command is not None and all(arg in after for arg in extras):
                command.unrecognized(extras, self.option_strings())
            self.unrecognized(extras)
        return args

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def unrecognized(self, extras: list[str], also_known: Iterable[str] = ()) -> NoReturn:
        known = [*self.option_strings(), *also_known]
        hints = [f"{arg.partition('=')[0]}: did you mean {match[0]}?"
                 for arg in extras if (match := close_flags(arg, known))]
        self.error(f"unrecognized arguments: {' '.join(extras)}"
                   + "".join(f"\n  {hint}" for hint in hints))


def build_parser() -> tuple[ArgumentParser, dict[str, Command]]:
    parser = ArgumentParser(
        prog="kfence-py", description="KFENCE for Linux userspace: a sampling guard-page "
        "detector of heap out-of-bounds, use-after-free and invalid frees.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    commands = {}
    for cls in COMMANDS:
        command = cls()
        subparser: ArgumentParser = sub.add_parser(cls.name, help=cls.help,
                                                   description=cls.help)
        # Before or after the command; SUPPRESS: not given here, the main parser's value stays.
        subparser.add_argument("-v", "--verbose", action="store_true",
                               default=argparse.SUPPRESS, help="log more")
        command.prepare_parser(subparser)
        commands[cls.name] = command
        parser.commands[cls.name] = subparser
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="kfence-py: %(message)s")
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        return int(commands[args.command].run(args))
    except CliError as exc:
        print(f"kfence-py: {exc}", file=sys.stderr)
        return int(exc.code)
    except BrokenPipeError:
        # Output cut short by a reader that went away (| head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
