"""Where symbolization looks: the symbolizer tool a variable names, and debug files
found by build-id (a debug directory, a debuginfod cache, a server's answer checked)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from ctl import PROGS, line_of

from kfence_py.debuginfo import DebugFiles
from kfence_py.elf import build_id
from kfence_py.symbolize import Symbolizer

PLUGIN = PROGS / "plugin.c"


@pytest.fixture(scope="module")
def plugin(programs) -> Path:
    return programs.build(PLUGIN, flags=["-shared", "-fPIC"])


def keep_offset(module: Path) -> int:
    """The link-time address of plugin_keep's malloc call's return (a return address)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(module)],
                         capture_output=True, text=True, check=True).stdout
    body = out.split("<plugin_keep>:")[1].split("\n\n")[0].splitlines()
    call = next(i for i, line in enumerate(body) if "call" in line)
    return int(body[call + 1].split(":")[0], 16)


def nothing_found() -> DebugFiles:
    return DebugFiles(directories=(), urls=())


def wrapper(tmp_path: Path, name: str, tool: str) -> tuple[Path, Path]:
    """An executable named name that logs its arguments and runs tool."""
    log = tmp_path / f"{name}.log"
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{shutil.which(tool)}" "$@"\n')
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize(("variable", "name", "tool"), [
    ("KFENCE_SYMBOLIZER_PATH", "my-symbolizer", "llvm-symbolizer"),
    ("KFENCE_SYMBOLIZER_PATH", "x86_64-linux-gnu-addr2line", "addr2line"),
    ("LLVM_SYMBOLIZER_PATH", "llvm-symbolizer-wrapped", "llvm-symbolizer"),
])
def test_the_tool_a_variable_names_is_the_one_run(plugin, tmp_path, monkeypatch, variable,
                                                  name, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    script, log = wrapper(tmp_path, name, tool)
    monkeypatch.setenv(variable, str(script))
    with Symbolizer(debug_files=nothing_found()) as symbolizer:
        frames = symbolizer.lookup(str(plugin), keep_offset(plugin), return_address=True)
        assert symbolizer.backend == tool
    assert [(f.function, Path(f.file or "").name, f.line) for f in frames] == [
        ("plugin_keep", "plugin.c", line_of("plugin_keep", PLUGIN))]
    # addr2line takes the module on its command line; llvm-symbolizer on its input
    assert log.exists() and ("-e" in log.read_text()) == (tool == "addr2line")


def test_kfence_symbolizer_path_comes_before_llvm_symbolizer_path(plugin, tmp_path,
                                                                  monkeypatch):
    ours, ours_log = wrapper(tmp_path, "ours-addr2line", "addr2line")
    llvm, llvm_log = wrapper(tmp_path, "llvm-symbolizer", "llvm-symbolizer")
    monkeypatch.setenv("KFENCE_SYMBOLIZER_PATH", str(ours))
    monkeypatch.setenv("LLVM_SYMBOLIZER_PATH", str(llvm))
    with Symbolizer(debug_files=nothing_found()) as symbolizer:
        assert symbolizer.lookup(str(plugin), keep_offset(plugin), return_address=True)
    assert ours_log.exists() and not llvm_log.exists()


def test_a_named_tool_that_is_not_there_is_said_and_passed_over(plugin, tmp_path, monkeypatch,
                                                                caplog):
    monkeypatch.setenv("KFENCE_SYMBOLIZER_PATH", str(tmp_path / "no-such-symbolizer"))
    monkeypatch.delenv("LLVM_SYMBOLIZER_PATH", raising=False)
    with caplog.at_level(logging.WARNING, logger="kfence_py"), \
            Symbolizer(debug_files=nothing_found()) as symbolizer:
        frames = symbolizer.lookup(str(plugin), keep_offset(plugin), return_address=True)
        assert symbolizer.backend in ("llvm-symbolizer", "addr2line", "dwarf")
    assert "KFENCE_SYMBOLIZER_PATH" in caplog.text and "not an executable" in caplog.text
    assert frames and frames[0].function == "plugin_keep"


# --- debug files by build-id -----------------------------------------------------------


@pytest.fixture(scope="module")
def split(plugin, tmp_path_factory) -> tuple[Path, Path, str]:
    """The plugin stripped, its debug file, and their build-id."""
    out = tmp_path_factory.mktemp("split")
    stripped, debug = out / "libplugin.so", out / "libplugin.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(plugin), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(plugin), "-o", str(stripped)], check=True)
    found = build_id(stripped)
    assert found is not None
    return stripped, debug, found


def server_directory(root: Path, wanted: str, content: Path) -> str:
    """A directory laid out as a debuginfod server's answers, as a file:// URL."""
    answer = root / "buildid" / wanted / "debuginfo"
    answer.parent.mkdir(parents=True)
    shutil.copy(content, answer)
    return root.as_uri()


def test_a_stripped_module_is_symbolized_from_its_debug_file(split, plugin, tmp_path):
    stripped, debug, wanted = split
    offset = keep_offset(plugin)  # the same addresses: only sections were taken out
    with Symbolizer(debug_files=nothing_found()) as symbolizer:
        assert all(f.file is None for f in symbolizer.lookup(str(stripped), offset,
                                                             return_address=True))
    directory = tmp_path / "debug"
    rest = directory / ".build-id" / wanted[:2] / f"{wanted[2:]}.debug"
    rest.parent.mkdir(parents=True)
    shutil.copy(debug, rest)
    with Symbolizer(debug_files=DebugFiles(directories=(directory,))) as symbolizer:
        assert symbolizer.file_for(str(stripped)) == str(rest)
        [frame] = symbolizer.lookup(str(stripped), offset, return_address=True)
    assert (Path(frame.file or "").name, frame.line) == ("plugin.c",
                                                         line_of("plugin_keep", PLUGIN))


def test_a_module_rebuilt_since_the_process_ran_is_not_read_for_it(split, plugin, tmp_path,
                                                                    caplog):
    """The build-id the state recorded is not the file's: its lines would be wrong."""
    _, _, wanted = split
    other = tmp_path / "other.so"
    src = tmp_path / "other.c"
    src.write_text("int other(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", str(src), "-o", str(other)], check=True)
    with caplog.at_level(logging.WARNING, logger="kfence_py"), \
            Symbolizer(debug_files=nothing_found()) as symbolizer:
        assert symbolizer.file_for(str(other), wanted) is None
        assert symbolizer.file_for(str(plugin), wanted) == str(plugin)
    assert "is not the file the process ran" in caplog.text


def test_debuginfod_answers_are_kept_in_the_cache_and_checked(split, tmp_path):
    _, debug, wanted = split
    cache = tmp_path / "cache"
    url = server_directory(tmp_path / "server", wanted, debug)
    fetched = DebugFiles(directories=(), urls=(url,), cache=cache).find(wanted)
    assert fetched == cache / wanted / "debuginfo" and build_id(fetched) == wanted
    # Once kept, no server is needed.
    again = DebugFiles(directories=(), urls=("http://127.0.0.1:9/",), cache=cache)
    assert again.find(wanted) == fetched


def test_a_debuginfod_answer_of_another_build_id_is_refused(split, tmp_path, caplog):
    _, _, wanted = split
    other = tmp_path / "other.so"
    src = tmp_path / "other.c"
    src.write_text("int other(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", str(src), "-o", str(other)], check=True)
    url = server_directory(tmp_path / "server", wanted, other)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="kfence_py"):
        assert DebugFiles(directories=(), urls=(url,), cache=cache).find(wanted) is None
    assert "not used" in caplog.text
    assert list(cache.rglob("*")) == [cache / wanted], "nothing kept, no temporary left"


def test_a_server_that_cannot_be_reached_is_asked_once(split, tmp_path, caplog):
    _, _, wanted = split
    files = DebugFiles(directories=(), urls=("http://127.0.0.1:9/",), cache=tmp_path / "c",
                       timeout=5)
    with caplog.at_level(logging.WARNING, logger="kfence_py"):
        assert files.find(wanted) is None
        assert files.find(wanted[::-1]) is None
    assert caplog.text.count("not asked again") == 1


def test_the_environment_sets_servers_cache_and_limits(tmp_path):
    files = DebugFiles.from_environment(env={
        "DEBUGINFOD_URLS": "http://a.example/  https://b.example", "XDG_CACHE_HOME": str(tmp_path),
        "DEBUGINFOD_TIMEOUT": "7", "DEBUGINFOD_MAXSIZE": "1000"})
    assert files.urls == ("http://a.example/", "https://b.example")
    assert files.cache == tmp_path / "kfence_py" / "debuginfod"
    assert (files.timeout, files.max_size) == (7, 1000)
    elfutils = DebugFiles.from_environment(env={"DEBUGINFOD_CACHE_PATH": str(tmp_path / "e")})
    assert elfutils.cache == tmp_path / "e" and elfutils.urls == ()
