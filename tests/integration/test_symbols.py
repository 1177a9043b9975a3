"""Symbols in reports, read from /proc/self/maps and the modules' files (csrc/symbols.c).

The report runs in the SIGSEGV handler of a program that goes on afterwards:
a damaged module file, a stripped binary or an old glibc's file names must
cost a name at most, never the program, and never name the wrong function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kfence_py.debuginfo import DebugFiles
from kfence_py.symbolize import Symbolizer, symbolize_text

RIGHT = {"sample_rate": 1, "placement": "right"}
PROGS = Path(__file__).resolve().parent / "progs"


@pytest.fixture(scope="module")
def modlib(programs):
    return programs.build("modlib.c", flags=["-shared", "-fPIC"])


@pytest.fixture(scope="module")
def modhost(programs):
    return programs.build("modhost.c")


@pytest.mark.parametrize("damage", ["none", "shoff", "phoff", "symtab", "strtab",
                                    "unterminated"])
def test_a_damaged_module_file_costs_names_not_the_program(programs, modlib, modhost, tmp_path,
                                                            damage):
    """Offsets that wrap around, a name without its NUL at the end of the file."""
    lib = tmp_path / "libdamaged.so"
    shutil.copy(modlib, lib)
    run = programs.run(modhost, str(lib), damage, options=RIGHT)
    assert run.returncode == 66, run.stderr[-2000:]
    assert "done" in run.stdout, "the program goes on after the report"
    [report] = run.reports
    frame = report.stack[0]
    assert frame.module == str(lib)
    if damage == "none":
        assert report.function == "lib_static_oob"
    else:
        assert frame.symbol is None or frame.function == "lib_static_oob", frame


def test_a_stripped_binary_names_no_function_after_an_export(programs, tmp_path):
    """.dynsym has only exported functions: the nearest one before a pc is not its function."""
    exe = tmp_path / "stripped"
    shutil.copy(programs.build("stripped.c", flags=["-rdynamic"]), exe)
    subprocess.run(["strip", "--strip-all", str(exe)], check=True)
    run = programs.run(exe, options=RIGHT)
    [report] = run.reports
    assert report.stack[0].module == str(exe)
    assert report.stack[0].symbol is None, report.text
    assert report.location == "<unknown>", report.text
    assert [f.function for f in report.stack[1:2]] == ["main"]


def test_old_glibc_file_names_are_libc(programs, tmp_path):
    """Before glibc 2.34 the kernel names libc libc-2.NN.so (libc.so.6 is a link to it)."""
    libc = Path(subprocess.run(["gcc", "-print-file-name=libc.so.6"], capture_output=True,
                               text=True, check=True).stdout.strip()).resolve()
    if not libc.is_file():
        pytest.skip("no libc.so.6 found")
    shutil.copy(libc, tmp_path / "libc-2.31.so")
    os.symlink("libc-2.31.so", tmp_path / "libc.so.6")
    source = tmp_path / "copy.c"
    source.write_text(
        "#include <stdlib.h>\n#include <string.h>\n"
        "__attribute__((noinline)) void copy_title(char *d, const char *s)"
        " { memcpy(d, s, 14); }\n"
        "int main(void) { char *t = malloc(13); copy_title(t, \"kfence-demo!!!\"); return 0; }\n")
    exe = programs.build(source, flags=["-fno-builtin"])
    run = programs.run(exe, options={**RIGHT, "align": 1},
                       env={"LD_LIBRARY_PATH": str(tmp_path)})
    [report] = run.reports
    assert report.stack[0].module == str(tmp_path / "libc-2.31.so"), report.text
    assert report.function == "copy_title", report.text


def test_a_report_fits_a_small_alternate_stack(programs):
    """Rust and Go run signal handlers on small alternate stacks (about 8 KiB)."""
    run = programs.run(programs.build("small_altstack.c"), "6", options=RIGHT)
    assert run.returncode == 66, run.stderr[-2000:]
    assert "done" in run.stdout
    [report] = run.reports
    assert report.function == "overflow"


# --- regressions from f8caf1f (dladdr) not fixed here: see the review's report ---

def test_a_sandboxed_program_keeps_modules_and_offsets_from_the_module_table(programs):
    """The maps cannot be opened under the sandbox; the module table was filled at the
    prctl() before it, so frames are module+offset, and symbolize names them."""
    exe = programs.build("sandboxed.c", flags=["-rdynamic"])
    run = programs.run(exe, options=RIGHT)
    assert "done" in run.stdout, run.stderr
    [report] = run.reports
    assert [f.module for f in report.stack[:1]] == [str(exe)], report.text
    with Symbolizer(debug_files=DebugFiles(directories=())) as symbolizer:
        text = symbolize_text(report.text, symbolizer)
    assert f"in exported_bug {PROGS / 'sandboxed.c'}:" in text, text


@pytest.mark.xfail(strict=True, reason="symbols.c needs open(): no function name once a "
                   "sandbox refuses it (f8caf1f had it from dladdr)")
def test_a_sandboxed_program_still_gets_modules_and_offsets(programs):
    exe = programs.build("sandboxed.c", flags=["-rdynamic"])
    run = programs.run(exe, options=RIGHT)
    assert "done" in run.stdout, run.stderr
    [report] = run.reports
    frame = report.stack[0]
    assert frame.module == str(exe), report.text
    assert frame.function == "exported_bug", report.text


GONE = """
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	void *h = dlopen(argv[1], RTLD_NOW);
	void (*f)(void) = (void (*)(void))dlsym(h, "lib_exported_oob");
	unlink(argv[1]);
	f();
	printf("done\\n");
	return 0;
}
"""


@pytest.fixture(scope="module")
def gone(programs, tmp_path_factory):
    """gone LIB: dlopen LIB, delete it, then make an out-of-bounds read in it."""
    source = tmp_path_factory.mktemp("gone") / "gone.c"
    source.write_text(GONE)
    return programs.build(source)


def test_a_deleted_module_keeps_its_names(programs, modlib, gone, tmp_path):
    """Its file is read through /proc/self/map_files: static functions are named too
    (f8caf1f, with dladdr, had only the exported ones)."""
    lib = tmp_path / "libgone.so"
    shutil.copy(modlib, lib)
    run = programs.run(gone, str(lib), options=RIGHT)
    [report] = run.reports
    assert [f.function for f in report.stack[:2]] == ["lib_static_oob", "lib_exported_oob"], \
        report.text


def test_a_deleted_module_offset_is_its_link_address(programs, gone, tmp_path):
    """Text linked away from its file offset (lld's layout, a linker script)."""
    lib = tmp_path / "libmoved.so"
    shutil.copy(programs.build("modlib.c", flags=["-shared", "-fPIC",
                                                  "-Wl,--section-start=.text=0x30000"]), lib)
    nm = subprocess.run(["nm", str(lib)], capture_output=True, text=True, check=True).stdout
    start = next(int(line.split()[0], 16) for line in nm.splitlines()
                 if line.endswith(" lib_static_oob"))
    run = programs.run(gone, str(lib), options=RIGHT)
    [report] = run.reports
    assert 0 < report.stack[0].module_offset - start < 0x40, report.text
