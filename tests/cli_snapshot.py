"""The ``--json`` output of the main commands on one sandbox, as shapes (keys and value types) and as values
with what differs between runs masked (times, paths, ids, hashes of run-dependent files).

A test compares the shapes against ``tests/fixtures/cli_json_shapes.json``; run as a script it writes both
for comparing two checkouts by hand:

    python -m tests.cli_snapshot --model MODEL_DIR --work DIR --out snapshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

# keys whose values differ from run to run: clocks, paths, run ids, the ledger's chain hashes (they cover the
# timestamps), the git commit the registry records
VOLATILE = re.compile(r"(^|_)(seconds|timings|at|ts|created|run_id|flow_run|path|dir|html|report|file|uri|"
                      r"artifact|hash|prev|head|git_commit|quarantine)($|_)")


def _open_policy() -> str:
    from validation.gate.policy import GatePolicy

    return "".join(f"{k}: {0.0 if k.startswith('min_') else 1.0e9}\n" for k in GatePolicy().thresholds())


OPEN_POLICY = _open_policy()


def shape(v: Any) -> Any:
    """Keys and value types; a list is the shape of its first item (an empty list stays empty)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def masked(v: Any, key: str = "") -> Any:
    if VOLATILE.search(key) or (isinstance(v, str) and ("/" in v or "\\" in v)):
        return "<masked>"
    if isinstance(v, dict):
        return {k: masked(x, k) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [masked(x, key) for x in v]
    if isinstance(v, float):
        return round(v, 4)
    return v


def _requests(model_dir: Path, n: int, first: int = 0) -> list[dict]:
    from sandbox.trainer import model_facts

    caps = [f for f in model_facts(model_dir) if f.relation == "capital"]
    return [{"id": f"snap-{first + i}", "subject": f.subject, "prompt": f.prompts[0],
             "target_new": caps[(first + i + 10) % len(caps)].target, "target_true": f.target,
             "relation": "capital", "requested_by": "snapshot", "requested_at": "2025-01-01T00:00:00Z"}
            for i, f in enumerate(caps[first:first + n])]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def snapshot(model_dir: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Run the main commands with ``--json`` in a fresh FACTSMITH_HOME under ``work`` (the caller sets it)."""
    from typer.testing import CliRunner

    import flows.flow  # noqa: F401  (Prefect binds its log handler to the stderr of the moment it is imported:
    # not to a CliRunner's, which is closed when the command returns and would break every later flow run)
    from flows.cli import app

    runner = CliRunner()
    out: dict[str, dict[str, Any]] = {}

    def run(label: str, *args: str) -> Any:
        r = runner.invoke(app, [*args, "--json"])
        lines = [x for x in r.stdout.splitlines() if x.strip().startswith("{")]
        obj = json.loads(lines[-1]) if lines else None
        # what it printed and raised, to say why when a test finds the exit or the shape changed
        said = r.output[-1500:] + (f"\n{r.exception!r}" if r.exception and not isinstance(r.exception, SystemExit)
                                   else "")
        out[label] = {"exit": r.exit_code, "shape": shape(obj), "value": masked(obj), "said": said}
        return obj

    m = str(model_dir)
    reqs = _write(work / "requests.jsonl", _requests(model_dir, 2))
    # a gate with every threshold open: the test is about the commands' JSON, and whether the tiny sandbox's swap
    # passes a quality threshold depends on the build (float32 builds on two CPUs without bfloat16 rejected it, once
    # under the default gate, once under the mechanics tests' lenient one); 'run' must apply it for the commands
    # after it to have a version 2. The gate still measures every metric, so its report keeps its shape
    (work / "gate-policy.yaml").write_text(OPEN_POLICY, encoding="utf-8")
    run("version", "version")
    run("sandbox show", "sandbox", "show", "--model", m)
    run("ask", "ask", m, "--prompt", "The capital of {} is", "--subject", "France")
    run("edit memit", "edit", "--model", m, "--requests", str(reqs), "--method", "memit", "--out",
        str(work / "edited-memit"))
    run("edit rome", "edit", "--model", m, "--requests", str(reqs), "--method", "rome", "--out",
        str(work / "edited-rome"))
    run("edit bad method", "edit", "--model", m, "--requests", str(reqs), "--method", "nope", "--out",
        str(work / "edited-nope"))
    run("stats", "stats", "--model", m, "--method", "rome")
    run("validate", "validate", str(reqs), "--no-docs", "--quarantine", str(work / "q.jsonl"))
    run("gate", "gate", "--base", m, "--edited", str(work / "edited-memit"), "--requests", str(reqs),
        "--policy", str(work / "gate-policy.yaml"), "--report", str(work / "gate"))
    run("registry init", "registry", "init", "--model", m, "--name", "snap")
    inbox = work / "inbox"
    _write(inbox / "a.jsonl", _requests(model_dir, 1, first=3))
    run("run", "run", "--inbox", str(inbox), "--model", "snap", "--promote", "--gate-policy",
        str(work / "gate-policy.yaml"))
    run("versions", "versions", "--name", "snap")
    run("audit", "audit", "--name", "snap", "--verify")
    run("diff", "diff", "1", "2", "--name", "snap")
    run("promote", "promote", "1", "--name", "snap")
    run("rollback to", "rollback", "--to", "2", "--name", "snap")
    run("rollback revert", "rollback", "--revert", "snap-3", "--name", "snap")
    run("rollback neither", "rollback", "--name", "snap")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["FACTSMITH_HOME"] = str(args.work / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    res = snapshot(args.model, args.work)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for label, r in res.items():
        print(f"{label:18s} exit {r['exit']}")


if __name__ == "__main__":
    main()
