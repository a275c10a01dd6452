"""``factsmith ask`` and the demo's before/after table (flows/ask.py) on the session's tiny sandbox: the answer
is what the model's fact table says, by directory and by registered version; bad input exits 2."""

from __future__ import annotations

import json

import pytest

NAME = "ask-tiny"


def cli(*args: str) -> tuple[int, dict | None, str]:
    """(exit code, the one JSON object printed, stderr) of the CLI run in-process."""
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, list(args))
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) <= 1 or "--json" not in args, r.stdout
    return r.exit_code, json.loads(lines[0]) if lines and "--json" in args else None, r.stderr


def fact(table: dict, subject: str, relation: str) -> dict:
    return next(f for f in table["facts"] if f["subject"] == subject and f["relation"] == relation)


@pytest.fixture(scope="module")
def table(tiny_build) -> dict:
    from editing.modeldir import load
    from sandbox.evaluate import knowledge_table

    return knowledge_table(*load(tiny_build.path), tiny_build.path)


@pytest.fixture(scope="module")
def registered(tiny_build) -> str:
    code, out, err = cli("registry", "init", "--model", str(tiny_build.path), "--name", NAME, "--json")
    assert code == 0 and out["version"] == 1, err
    return NAME


@pytest.mark.slow
def test_ask_a_directory_says_what_the_fact_table_says(tiny_build, table):
    germany = fact(table, "Germany", "capital")
    france = fact(table, "France", "head_of_state")  # a name of several tokens
    assert germany["correct"] and france["correct"]
    for f in (germany, france):
        subject_prompt = f["prompt"].replace(f["subject"], "{}", 1)
        code, out, _ = cli("ask", str(tiny_build.path), "--prompt", subject_prompt, "--subject", f["subject"], "--json")
        assert code == 0 and out["prompt"] == f["prompt"] and out["answer"] == f["answer"] == f["expected"]
        assert out["model"] == str(tiny_build.path) and "version" not in out
        assert out["continuation"].strip().startswith(f["expected"])
        probs = [t["prob"] for t in out["top"]]
        assert len(out["top"]) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert f["expected"].startswith(out["top"][0]["token"].strip())  # greedy's first token is the likeliest
    # the older spelling is the same command
    code, new, _ = cli("ask", str(tiny_build.path), "--prompt", germany["prompt"], "--json")
    code_old, old, _ = cli("sandbox", "ask", "--model", str(tiny_build.path), "--prompt", germany["prompt"], "--json")
    assert code == code_old == 0 and old == new and new["answer"] == "Berlin"
    code, out, _ = cli("ask", str(tiny_build.path), "--prompt", germany["prompt"], "--top", "2", "--json")
    assert code == 0 and out["top"] == new["top"][:2]
    code, _, _ = cli("ask", str(tiny_build.path), "--prompt", germany["prompt"])  # the table, not JSON
    assert code == 0


@pytest.mark.slow
def test_ask_a_registered_version_by_alias_and_number(tiny_build, table, registered):
    germany = fact(table, "Germany", "capital")
    code, by_dir, _ = cli("ask", str(tiny_build.path), "--prompt", germany["prompt"], "--json")
    for ref in (f"{registered}@champion", f"{registered}/1", f"models:/{registered}@champion"):
        code, out, err = cli("ask", ref, "--prompt", "The capital of {} is", "--subject", "Germany", "--json")
        assert code == 0, err
        assert out["model"] == registered and out["ref"] == ref and out["version"] == 1
        assert {k: out[k] for k in ("prompt", "answer", "top")} == {k: by_dir[k] for k in ("prompt", "answer", "top")}
    code, out, _ = cli("ask", f"{registered}@nope", "--prompt", "x", "--json")
    assert code == 2 and out["ok"] is False and "no alias 'nope'" in out["error"]
    code, out, _ = cli("ask", f"{registered}/9", "--prompt", "x", "--json")
    assert code == 2 and "has no version 9" in out["error"]
    code, out, _ = cli("ask", "nobody@champion", "--prompt", "x", "--json")
    assert code == 2 and "no registered model 'nobody'" in out["error"]


@pytest.mark.unit
@pytest.mark.parametrize("args, message", [
    (["--prompt", "The capital of {} is"], "has '{}' where a subject goes: give --subject"),
    (["--prompt", "The capital is", "--subject", "France"], "expected exactly one '{}'"),
    (["--prompt", "{} and {}", "--subject", "France"], "expected exactly one '{}'"),
    (["--prompt", "x", "--top", "0"], "--top: expected at least 1, found 0"),
    (["--prompt", " "], "found a blank prompt"),
])
def test_ask_bad_prompt_or_top_exits_2_before_loading_a_model(tmp_path, args, message):
    code, out, err = cli("ask", str(tmp_path / "no-model-needed"), *args, "--json")
    assert code == 2 and out["ok"] is False and message in out["error"]
    assert message in err


@pytest.mark.unit
def test_ask_something_that_is_neither_a_directory_nor_a_reference_exits_2(tmp_path):
    code, out, _ = cli("ask", str(tmp_path / "nope"), "--prompt", "x", "--json")
    assert code == 2 and "no such model directory, and not a registered version" in out["error"]
    assert str(tmp_path / "nope") in out["error"]
    (tmp_path / "empty").mkdir()
    code, out, _ = cli("ask", str(tmp_path / "empty"), "--prompt", "x", "--json")  # a directory wins: not a model
    assert code == 2 and "config.json" in out["error"]


@pytest.mark.slow
def test_the_run_table_asks_the_applied_requests_of_both_versions(registered, table):
    """The demo's table from a pipeline result: only the applied requests (of every version the run registered:
    the last gate report holds only the last version's), the registered versions' greedy answers, and says_new
    by validation.gate.answers.says on what the champion says."""
    from flows.ask import run_answers

    germany, france = fact(table, "Germany", "capital"), fact(table, "France", "capital")
    applied = [
        {"id": "de", "subject": "Germany", "prompt": germany["prompt"], "new": "Berlin", "version": 1},  # says it already
        {"id": "fr", "subject": "France", "prompt": france["prompt"], "new": "Lyon", "version": 1},
    ]
    gate_rows = [{"id": "fr", "subject": "France", "prompt": france["prompt"], "target_new": "Lyon"}]
    result = {"model": registered, "version": 1, "parent_version": 1, "gate": {"requests": gate_rows},
              "states": {"applied": applied, "rejected": [{"id": "out", "subject": "Spain", "new": "Toledo"}]}}
    rows = run_answers(result)
    assert [r["id"] for r in rows] == ["de", "fr"]
    de, fr = rows
    assert de["base"] == de["champion"] == "Berlin" and de["says_new"] and de["said_new_before"]
    assert fr["base"] == fr["champion"] == france["answer"] == "Paris" and not fr["says_new"]
    assert set(de) >= {"id", "prompt", "target_new", "base", "champion", "says_new"}
    assert run_answers({**result, "version": None}) == []
