"""Real programs nobody here wrote, every allocation guarded while slots are free
(sample_rate=1, a pool of 4096): same output, same exit status, no report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from debian_packages import needs_debian

import kfence_py

EVERY = "sample_rate=1:num_objects=4096"


def same_with_and_without(cmd: list[str], tmp_path: Path, *, env: dict[str, str] | None = None,
                          stdin: str | None = None, timeout: float = 300,
                          same_stdout: bool = True) -> tuple[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KFENCE_OPTIONS")}
    base.update(env or {})
    plain = subprocess.run(cmd, env=base, cwd=tmp_path, input=stdin, capture_output=True,
                           text=True, timeout=timeout, check=False)
    guarded_env = {**base, "LD_PRELOAD": str(kfence_py.lib_path()), "KFENCE_OPTIONS": EVERY}
    guarded = subprocess.run(cmd, env=guarded_env, cwd=tmp_path, input=stdin,
                             capture_output=True, text=True, timeout=timeout, check=False)
    assert "KFENCE" not in guarded.stderr, guarded.stderr[-3000:]
    assert guarded.returncode == plain.returncode, guarded.stderr[-3000:]
    if same_stdout:
        assert guarded.stdout == plain.stdout
    return plain.stdout, guarded.stdout


@pytest.mark.slow
@pytest.mark.parametrize("pymalloc", ["pymalloc", "malloc"])
def test_python_runs_a_slice_of_its_own_test_suite(tmp_path, pymalloc):
    # regrtest prints seeds and timings: compare the verdicts, not the text
    plain, guarded = same_with_and_without(
        [sys.executable, "-m", "test", "-q", "test_json", "test_dict", "test_bisect",
         "test_heapq", "test_string"],
        tmp_path, env={"PYTHONMALLOC": pymalloc}, same_stdout=False)
    assert "Result: SUCCESS" in plain and "Result: SUCCESS" in guarded, guarded


@pytest.mark.slow
def test_gcc_and_gxx_compile_large_files(tmp_path):
    c = tmp_path / "big.c"
    c.write_text("\n".join(
        f"static int f{i}(int x) {{ int a[{i % 50 + 1}] = {{0}}; a[0] = x; "
        f"return a[0] * {i} + (x > {i} ? f{i - 1 if i else 0}(x - 1) : 0); }}"
        for i in range(2000)) + "\nint main(void) { return f1999(3) & 1; }\n")
    cxx = tmp_path / "big.cpp"
    cxx.write_text("#include <map>\n#include <string>\n#include <vector>\n" + "\n".join(
        f"std::map<std::string, std::vector<int>> g{i}() {{ return {{{{\"k{i}\", {{{i}}}}}}}; }}"
        for i in range(300)) + "\nint main() { return (int)g7().size() - 1; }\n")
    for cmd in (["gcc", "-O2", "-c", str(c), "-o", "big.o"],
                ["g++", "-O1", "-c", str(cxx), "-o", "bigxx.o"]):
        same_with_and_without(cmd, tmp_path)


@pytest.mark.slow
@needs_debian("sqlite3", "sqlite3")
def test_sqlite3(tmp_path, debian):
    sqlite3 = debian("sqlite3", "sqlite3")
    script = "create table t(k integer primary key, v text);\n" + "".join(
        f"insert into t(v) values ('{'x' * (i % 90)}{i}');\n" for i in range(5000)
    ) + "select count(*), sum(length(v)), max(k) from t;\nselect v from t where k % 997 = 0;\n"
    out, _ = same_with_and_without([sqlite3, ":memory:"], tmp_path, stdin=script)
    assert out.startswith("5000|")


def test_perl_hashes(tmp_path):
    out, _ = same_with_and_without(
        ["perl", "-e", 'my %h; $h{$_ x 3} = [$_] for 1..50000; '
                       'my $n = 0; $n += $_->[0] for values %h; print scalar(keys %h), " $n\\n"'],
        tmp_path)
    assert out == "50000 1250025000\n"


def test_git(tmp_path):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path)}
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env={**os.environ, **env})
    for i in range(30):
        (repo / f"f{i}.txt").write_text(f"line {i}\n" * (i + 1))
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env={**os.environ, **env})
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "one"], check=True,
                   env={**os.environ, **env})
    same_with_and_without(["git", "-C", str(repo), "log", "--stat", "--format=%s"], tmp_path,
                          env=env)
    same_with_and_without(["git", "-C", str(repo), "grep", "-c", "line 2"], tmp_path, env=env)


@needs_debian("jq", "jq")
def test_jq(tmp_path, debian):
    jq = debian("jq", "jq")
    data = "[" + ",".join(f'{{"id": {i}, "tags": ["a{i % 7}", "b{i % 3}"]}}'
                          for i in range(20000)) + "]"
    program = "group_by(.tags[0]) | map({k: .[0].tags[0], n: length})"
    out, _ = same_with_and_without([jq, "-c", program], tmp_path, stdin=data)
    assert '"n":' in out
