"""The ``--json`` output of the main commands keeps its shape: keys, value types and exit codes, against
``tests/fixtures/cli_json_shapes.json`` (written by ``python -m tests.cli_snapshot`` on the same tiny sandbox).
A changed output format is a deliberate change of that file, never an accident."""

from __future__ import annotations

import json

from tests.cli_snapshot import snapshot
from tests.conftest import FIXTURES

# exit codes that depend on what the tiny sandbox learned, not on the command's contract: the gate passes (0)
# or fails (1) the two capital swaps depending on the build's numbers
QUALITY_EXITS = {"gate": {0, 1}}


# maps whose keys are data, not format: a version's tags (git_commit only in a git checkout, gate.<metric> only
# for the metrics a gate measured)
FREE_FORM = ("tags",)


def differences(want, got, path: str = "$") -> list[str]:
    """Where ``got``'s shape departs from ``want``'s; an empty list on either side matches any list."""
    if path.rsplit(".", 1)[-1] in FREE_FORM:
        return []
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}: key {k!r} missing" for k in want.keys() - got.keys()]
        out += [f"{path}: key {k!r} is new" for k in got.keys() - want.keys()]
        for k in want.keys() & got.keys():
            out += differences(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        return differences(want[0], got[0], f"{path}[0]") if want and got else []
    # an optional value may be None in one run; a command's output never (it printed no JSON object)
    if want != got and ("NoneType" not in (want, got) or path == "$"):
        return [f"{path}: {want} became {got}"]
    return []


def test_differences_sees_a_renamed_key_and_a_changed_type():
    want = {"a": {"b": "number", "c": ["str"]}, "d": "bool"}
    assert differences(want, {"a": {"b": "number", "c": []}, "d": "bool"}) == []
    assert differences(want, "NoneType") == ["$: {'a': {'b': 'number', 'c': ['str']}, 'd': 'bool'} became NoneType"]
    assert differences(want, {"a": {"b": "number", "c": ["str"]}, "d": "NoneType"}) == []
    assert sorted(differences(want, {"a": {"bb": "number", "c": ["str"]}, "d": "str"})) == [
        "$.a: key 'b' missing", "$.a: key 'bb' is new", "$.d: bool became str"]


def test_json_output_of_the_main_commands_keeps_its_shape(tiny_build, home, tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    (home / "cache").mkdir(exist_ok=True)
    (h / "cache").symlink_to(home / "cache", target_is_directory=True)  # the session's statistics
    monkeypatch.setenv("FACTSMITH_HOME", str(h))
    monkeypatch.setenv("PREFECT_HOME", str(h / "prefect"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    got = snapshot(tiny_build.path, tmp_path)
    want = json.loads((FIXTURES / "cli_json_shapes.json").read_text(encoding="utf-8"))
    assert sorted(got) == sorted(want)
    problems = []
    for label, w in want.items():
        g = got[label]
        found = [f"exit {w['exit']} became {g['exit']}"] if g["exit"] not in QUALITY_EXITS.get(label, {w["exit"]}) else []
        found += differences(w["shape"], g["shape"])
        problems += [f"{label}: {d}" for d in found] + ([f"{label} said:\n{g['said']}"] if found else [])
    assert not problems, "\n".join(problems)
    # values the restructuring must not move: the commands' own decisions on this sandbox
    assert got["edit bad method"]["value"]["error"] == "--method: expected rome, memit or alphaedit, found 'nope'"
    assert got["run"]["value"]["counts"] == {"applied": 1, "quarantined": 0, "rejected": 0, "superseded": 0}
    assert [c["b"]["request_id"] for c in got["diff"]["value"]["changed"]] == ["snap-3"]
    assert got["rollback revert"]["value"]["kind"] == "rollback"
