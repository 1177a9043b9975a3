"""The kfence-py command line.  Each subcommand is a small class with
``prepare_parser()`` and ``run()``; ``main()`` returns the exit status."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from typing import ClassVar

from . import __version__
from ._native import DEMO_PATH, LIB_PATH
from .options import format_options, markdown_table, option_specs
from .reports import parse_reports

log = logging.getLogger("kfence_py")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
        return EXIT_OK


class OptionsCommand(Command):
    name = "options"
    help = "list the KFENCE_OPTIONS the library understands"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--markdown", action="store_true",
                            help="print README's option table")

    def run(self, args: argparse.Namespace) -> int:
        if args.markdown:
            sys.stdout.write(markdown_table())
            return EXIT_OK
        for spec in option_specs().values():
            print(f"{spec.name}={spec.default}\n    {spec.description}")
        return EXIT_OK


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
            return EXIT_OK
        return EXIT_FAILURE


COMMANDS: tuple[type[Command], ...] = (DemoCommand, LibPathCommand, OptionsCommand)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="kfence-py", description="KFENCE for Linux userspace: a sampling guard-page "
        "detector of heap out-of-bounds, use-after-free and invalid frees.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for cls in COMMANDS:
        command = cls()
        command.prepare_parser(sub.add_parser(cls.name, help=cls.help, description=cls.help))
        commands[cls.name] = command
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="kfence-py: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return commands[args.command].run(args)
