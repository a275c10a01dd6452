"""Chaos: ``factsmith run`` killed with SIGKILL at a random moment, then run again, trial after trial; then
what must hold of the registry, the ledger and the inbox.

    python -m bench.chaos [--trials 20] [--per-trial 2] [--seed 0] [--out bench/results/chaos.json]

Registers the demo sandbox (built or reused from the sandbox cache) in a fresh embedded store (a temporary
FACTSMITH_HOME; the editing cache is the user's, so the statistics are computed once). Each trial drops an
inbox file -- ``--per-trial`` requests of the shipped inbox, now and then a row that must be quarantined and a
copy of a request an earlier trial applied -- starts ``factsmith run --promote`` (the demo's hparams and gate
policy) in its own process group and kills the group with SIGKILL after a delay drawn uniformly over the
length of a whole run (measured by a first run that is not killed, then the mean of the completed runs), so
that kills land in validation, the target optimisation, the solve, the gate, the registration, the ledger
append and the file moves. Then it runs again, unkilled, to completion. After all trials:

* every version's weights rebuild and match their hash (``load_model``), and the versions form one line;
* every inbox row has exactly one intake state in the ledger (applied, quarantined, rejected or superseded),
  none is lost, none is applied twice; the copies applied nothing;
* ``factsmith audit --verify`` passes; the inbox holds nothing unprocessed.

Prints a table of the trials and the checks; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench._common import REPO, RESULTS, demo_home

NAME = "demo"
WORLDS = REPO / "sandbox" / "worlds"


def _factsmith(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _run_args(inbox: Path) -> list[str]:
    return ["run", "--inbox", str(inbox), "--model", NAME, "--promote", "--hparams", str(WORLDS / "demo-memit.yaml"),
            "--gate-policy", str(WORLDS / "demo-gate.yaml"), "--json"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--per-trial", type=int, default=2, help="requests of the shipped inbox per trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from sandbox import example_inbox

    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir, h, env = demo_home(tmp, "INFO")  # INFO for chaos: the phase a kill hit
        p = _factsmith(["registry", "init", "--model", str(model_dir), "--name", NAME, "--json"], env)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]

        pool = []
        for f in sorted(example_inbox().glob("*.jsonl")):
            pool += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        rng.shuffle(pool)
        inbox = tmp / "inbox"
        inbox.mkdir()
        written: dict[str, str] = {}  # request id -> what it is: request | bad | copy
        applied_earlier: list[dict] = []
        trials, durations = [], []
        for t in range(args.trials):
            rows = [pool.pop() for _ in range(min(args.per_trial, len(pool)))]
            for r in rows:
                written[r["id"]] = "request"
            if rng.random() < 0.3:
                bad = {"id": f"bad-{t}", "subject": "Atlantis", "prompt": "The capital of {} is",
                       "target_new": "Poseidonia", "target_true": "Poseidonia"}  # new = old: quarantined
                rows.append(bad)
                written[bad["id"]] = "bad"
            if applied_earlier and rng.random() < 0.3:
                cp = dict(rng.choice(applied_earlier), id=f"copy-{t}")  # the same content under another id
                rows.append(cp)
                written[cp["id"]] = "copy"
            (inbox / f"trial-{t:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            kill_after = None if t == 0 else rng.uniform(0, sum(durations) / len(durations))
            t0 = time.perf_counter()
            p = _factsmith(_run_args(inbox), env)
            killed = False
            if kill_after is not None:
                try:
                    p.wait(timeout=kill_after)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    killed = True
            out, err = p.communicate(timeout=1800)
            first = {"exit": p.returncode, "seconds": round(time.perf_counter() - t0, 1), "killed": killed,
                     "kill_after_s": round(kill_after, 1) if kill_after is not None else None,
                     "phase": _phase(err)}
            if not killed:
                durations.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            p = _factsmith(_run_args(inbox), env)
            out2, err2 = p.communicate(timeout=1800)
            second = {"exit": p.returncode, "seconds": round(time.perf_counter() - t0, 1)}
            if p.returncode in (0, 1, 2):
                durations.append(second["seconds"])
                res = json.loads(out2.strip().splitlines()[-1])
                second["version"] = res.get("version")
                second["states"] = {k: len(v) for k, v in (res.get("states") or {}).items()}
            else:
                second["stderr"] = err2[-1500:]
            done = {r.get("request_id") for r in _ledger(h) if r.get("event") == "applied"}
            applied_earlier = [r for r in applied_earlier + rows if written[r["id"]] == "request" and r["id"] in done]
            trials.append({"trial": t, "requests": len(rows), "first": first, "again": second})
            print(json.dumps(trials[-1]), flush=True)

        checks = _checks(h, env, inbox, written)

    n_killed = sum(1 for t in trials if t["first"]["killed"])
    by_phase = dict(Counter(t["first"]["phase"] for t in trials if t["first"]["killed"]))
    print()
    print(f"{'trial':>6}{'kill at s':>11}{'killed in':>48}{'exit':>6}{'again':>7}{'version':>9}")
    for t in trials:
        f, a = t["first"], t["again"]
        print(f"{t['trial']:>6}{f['kill_after_s'] if f['kill_after_s'] is not None else '-':>11}"
              f"{f['phase'] if f['killed'] else 'not killed':>48}{f['exit']:>6}{a['exit']:>7}"
              f"{str(a.get('version')):>9}")
    print("\nkills by phase: " + ", ".join(f"{k} {v}" for k, v in by_phase.items()))
    for k, v in checks.items():
        print(f"{k}: {v}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "command": f"python -m bench.chaos --trials {args.trials} --per-trial {args.per_trial} --seed {args.seed}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "killed": n_killed, "kills_by_phase": by_phase, "trials": trials,
                                    "checks": checks},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    sys.exit(0 if checks["ok"] else 1)


# what a run's log says when each phase ends -> the phase that follows (where a kill after it landed)
PHASES = (("Starting temporary server", "Prefect start-up"), ("Beginning flow run", "scanning the inbox"),
          ("'scan-inbox", "validation"), ("'validate-", "edit and gate (targets, solve, gate, bisection)"),
          ("'edit-gate-bisect", "registration and ledger append"), ("'commit-", "file moves"),
          ("'move-files", "artifacts"), ("Flow run", "shutdown"))


def _phase(stderr: str) -> str:
    """The phase a killed run was in: the one after the last phase its log says finished."""
    phase = "process start-up"
    for line in stderr.splitlines():
        for key, label in PHASES:
            if key in line and (key.startswith(("Starting", "Beginning")) or "Finished in state" in line):
                phase = label
    return phase


def _ledger(h: Path) -> list[dict]:
    p = h / "registry" / "ledger" / f"{NAME}.jsonl"
    return [json.loads(x) for x in p.read_text().split("\n") if x.strip()] if p.is_file() else []


def _checks(h: Path, env: dict, inbox: Path, written: dict[str, str]) -> dict:
    os.environ.update(FACTSMITH_HOME=str(h), HF_HUB_OFFLINE="1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from registry.store import open_store

    out = end_states(NAME, open_store(), inbox, written)
    p = _factsmith(["audit", "--name", NAME, "--verify", "--json"], env)
    stdout, _ = p.communicate(timeout=300)
    out["audit_verify"] = p.returncode == 0 and json.loads(stdout.strip().splitlines()[-1])["verify"]["ok"]
    out["ok"] = out["ok"] and out["audit_verify"]
    return out


def end_states(name: str, store, inbox: Path, written: dict[str, str]) -> dict:
    """What must hold after killed and rerun runs (bench/chaos.py, and its bounded version in the tests):
    every version's weights rebuild and match their hash, the versions form one line, every row written
    (request id -> ``request``, ``bad`` or ``copy``) has exactly one intake state in the ledger, none is applied
    twice, no copy and no bad row is applied, and the inbox holds nothing unprocessed. ``ok``: all of it."""
    from registry import ledger as L
    from registry.lineage import load_model
    from registry.versions import versions

    vs = versions(name, store)
    bad_weights = []
    for v in vs:
        try:
            load_model(f"{name}/{v.version}", store=store)
        except Exception as e:  # noqa: BLE001 -- the figure
            bad_weights.append(f"v{v.version}: {type(e).__name__}: {e}")
    linear = all(v.parent_version is not None and v.parent_version < v.version for v in vs[1:])
    led = L.read(name)
    intake = Counter()
    applied = Counter()
    for r in led:
        if r.get("event") in ("applied", "quarantined", "rejected", "superseded") and r.get("request_id") in written:
            if r["event"] == "superseded" and r.get("version") is not None and "superseded by request" in \
                    str(r.get("state_reason") or r.get("reason") or ""):
                continue  # a later request replaced an applied fact: not an intake state
            intake[r["request_id"]] += 1
        if r.get("event") == "applied" and not r.get("via_rollback"):
            applied[r.get("request_id")] += 1
    lost = sorted(i for i in written if intake[i] == 0)
    more = sorted(i for i in written if intake[i] > 1)
    twice = sorted(i for i, n in applied.items() if n > 1)
    copies_applied = sorted(i for i in written if written[i] == "copy" and applied[i] > 0)
    bad_applied = sorted(i for i in written if written[i] == "bad" and applied[i] > 0)
    left = sorted(x.name for x in inbox.glob("*.jsonl"))
    ok = not bad_weights and linear and not lost and not more and not twice and not copies_applied \
        and not bad_applied and not left
    return {"ok": ok, "versions": len(vs), "weights_not_verified": bad_weights, "linear_lineage": linear,
            "rows_written": len(written), "rows_lost": lost, "rows_with_two_states": more, "applied_twice": twice,
            "copies_applied": copies_applied, "bad_rows_applied": bad_applied, "rejected_why": dict(Counter(
                str(r.get("state_reason") or r.get("reason"))[:80] for r in led
                if r.get("event") == "rejected" and r.get("request_id") in written).most_common(8)),
            "states": dict(Counter(r["event"] for r in led if r.get("request_id") in written)), "inbox_left": left}


if __name__ == "__main__":
    main()
