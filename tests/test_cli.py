"""The factsmith command line: fast --help, one JSON object with --json, clear errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY_SUBJECTS


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "factsmith"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def one_json(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.unit
def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from typer.testing import CliRunner; from flows.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'prefect', 'mlflow', 'great_expectations') if m in sys.modules]; "
            "assert not heavy, heavy; print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sandbox" in out.stdout and "demo" in out.stdout


@pytest.mark.unit
def test_version_json():
    assert "factsmith" in one_json(run("version", "--json", check=True))


@pytest.mark.unit
def test_bad_facts_file_exits_2_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "facts.jsonl"
    bad.write_text('{"subject": "A", "prompt": "The capital of {} is", "target": "B"}\n{"subject": "C", "prompt": "{} is"}\n')
    out = tmp_path / "model"
    proc = run("sandbox", "build", "--facts", str(bad), "--out", str(out), "--json")
    assert proc.returncode == 2
    err = one_json(proc)
    assert err["ok"] is False and str(bad) in err["error"] and "line 2" in err["error"] and "'target'" in err["error"]
    assert "line 2" in proc.stderr
    assert not out.exists()


@pytest.mark.unit
def test_missing_facts_file_exits_2(tmp_path):
    proc = run("sandbox", "build", "--facts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "file not found" in proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.unit
@pytest.mark.parametrize("content, why", [(None, "file not found"), ("\n \n", "file is empty"),
                                          ("[]", "holds no names")])
def test_bad_names_file_exits_2_naming_the_file(tmp_path, content, why):
    names = tmp_path / "names.txt"
    if content is not None:
        names.write_text(content)
    out = tmp_path / "m"
    proc = run("sandbox", "build", "--limit", "1", "--names", str(names), "--out", str(out), "--json")
    assert proc.returncode == 2
    err = one_json(proc)
    assert err["ok"] is False and err["error"].startswith(str(names)) and why in err["error"]
    assert not out.exists()


@pytest.mark.unit
def test_world_export(tmp_path):
    res = one_json(run("sandbox", "world", "--out", str(tmp_path / "w.jsonl"), "--json", check=True))
    assert res["facts"] == 289 and len((tmp_path / "w.jsonl").read_text().splitlines()) == 289


@pytest.mark.slow
def test_build_show_and_ask_reuse_the_session_build(tiny_build, tmp_path):
    # same facts, preset and seed as the session build: the CLI must find it in FACTSMITH_HOME's cache
    out = tmp_path / "m"
    res = one_json(run("sandbox", "build", "--out", str(out), "--limit", str(TINY_SUBJECTS), "--json", check=True))
    assert res["cached"] is True and res["key"] == tiny_build.manifest["key"]
    assert res["accuracy"]["train"] >= 0.98
    show = one_json(run("sandbox", "show", "--model", str(out), "--json", check=True))
    assert show["total"] == len([f for f in show["facts"]]) and show["correct"] / show["total"] >= 0.98
    ask = one_json(run("sandbox", "ask", "--model", str(out), "--prompt", "The capital of {} is", "--subject", "Germany",
                       "--json", check=True))
    assert ask["prompt"] == "The capital of Germany is" and ask["answer"] == "Berlin"
