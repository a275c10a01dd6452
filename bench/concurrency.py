"""Concurrency: ``factsmith run`` processes started together, on one model and on two.

    python -m bench.concurrency [--runs 4] [--per-run 2] [--out bench/results/concurrency.json]

Registers the demo sandbox (built or reused from the sandbox cache) twice -- models ``a`` and ``b`` -- in a
fresh embedded store (a temporary FACTSMITH_HOME; the editing cache is the user's). Then:

1. **One model:** ``--runs`` ``factsmith run --promote`` processes on model ``a``, each with an inbox of its own
   (``--per-run`` requests of the shipped inbox, distinct subjects), started together. They take turns on the
   model's run lock (each waits for the one before). Checks: every run exits 0 or 1 (applied, or rejected by
   the gate), every request has exactly one intake state in the ledger, none applied twice, none lost; the
   versions form one line (each the parent of the next); every inbox emptied; ``audit --verify``.
2. **Two models:** one run on ``a`` and one on ``b`` started together: they must not wait for each other. Each
   is also timed alone first; the figure is the wall time of both together against the longer one alone and
   against the two in turn.

Prints the figures; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench._common import REPO, RESULTS, demo_home

WORLDS = REPO / "sandbox" / "worlds"


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run_args(inbox: Path, model: str) -> list[str]:
    return ["run", "--inbox", str(inbox), "--model", model, "--promote", "--hparams", str(WORLDS / "demo-memit.yaml"),
            "--gate-policy", str(WORLDS / "demo-gate.yaml"), "--json"]


def _together(jobs: list[tuple[Path, str]], env: dict) -> tuple[float, list[dict]]:
    """Start every job at once; each one's exit, the second it ended (each waited on by a thread of its own, so
    the time is its own end, not when it was collected) and its version."""
    import threading

    t0 = time.perf_counter()
    out: list[dict] = [{} for _ in jobs]

    def one(i: int, inbox: Path, model: str) -> None:
        p = _start(_run_args(inbox, model), env)
        so, se = p.communicate(timeout=3600)
        res = json.loads(so.strip().split("\n")[-1]) if so.strip() else {}
        out[i] = {"model": model, "exit": p.returncode, "ended_s": round(time.perf_counter() - t0, 1),
                  "version": res.get("version"), "error": None if p.returncode in (0, 1, 2) else se[-1500:]}

    threads = [threading.Thread(target=one, args=(i, inbox, model)) for i, (inbox, model) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sorted(out, key=lambda r: r["ended_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--per-run", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "concurrency.json")
    args = ap.parse_args()

    from sandbox import example_inbox

    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir, h, env = demo_home(tmp, "WARNING")
        for m in ("a", "b"):
            p = _start(["registry", "init", "--model", str(model_dir), "--name", m, "--json"], env)
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]

        pool: list[dict] = []
        for f in sorted(example_inbox().glob("*.jsonl")):
            pool += [json.loads(x) for x in f.read_text().split("\n") if x.strip()]
        seen, distinct = set(), []
        for r in pool:  # one request a subject: no run's request supersedes another's
            if r["subject"] not in seen:
                seen.add(r["subject"])
                distinct.append(r)

        def inbox(name: str, rows: list[dict]) -> Path:
            d = tmp / name
            d.mkdir()
            (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            return d

        # 1. one model, --runs runs at once
        written = []
        jobs = []
        for i in range(args.runs):
            rows = [distinct.pop(0) for _ in range(args.per_run)]
            written += [r["id"] for r in rows]
            jobs.append((inbox(f"in-{i}", rows), "a"))
        wall, runs = _together(jobs, env)
        print(f"{args.runs} runs on one model: {wall:.1f} s; " + json.dumps(runs), flush=True)
        one = _check(h, env, "a", written, [j[0] for j in jobs])
        one.update({"runs": runs, "wall_s": round(wall, 1)})

        # 2. two models at once, each timed alone first (other requests, same size)
        alone = []
        for m in ("a", "b"):
            rows = [distinct.pop(0) for _ in range(args.per_run)]
            w, r = _together([(inbox(f"alone-{m}", rows), m)], env)
            alone.append(round(w, 1))
        rows_a = [distinct.pop(0) for _ in range(args.per_run)]
        rows_b = [distinct.pop(0) for _ in range(args.per_run)]
        wall2, runs2 = _together([(inbox("two-a", rows_a), "a"), (inbox("two-b", rows_b), "b")], env)
        two = {"alone_s": alone, "together_s": round(wall2, 1), "runs": runs2, "in_turn_s": round(sum(alone), 1),
               "neither_waited": _neither_waited(alone, [r["ended_s"] for r in runs2])}
        print(f"two models: alone {alone} s, together {wall2:.1f} s (in turn would be {sum(alone):.1f} s)", flush=True)

    res = {"one_model": one, "two_models": two,
           "meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "command": f"python -m bench.concurrency --runs {args.runs} --per-run {args.per_run}"}}
    print(f"\none model, {args.runs} runs at once: versions {one['versions']} (linear: {one['linear']}), "
          f"{one['requests']} requests, lost {len(one['lost'])}, applied twice {len(one['applied_twice'])}, "
          f"inboxes left {one['inbox_left']}, audit --verify {one['audit_verify']}; states {one['states']}")
    print(f"two models at once: {two['together_s']} s against {max(alone)} s for the longer alone and "
          f"{two['in_turn_s']} s in turn")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    ok = one["ok"] and two["neither_waited"]
    sys.exit(0 if ok else 1)


def _neither_waited(alone: list[float], ended: list[float]) -> bool:
    """Had one run waited for the other, the first would end at about its time alone and the second at about
    the two in turn. Running at once, either both end later than alone (sharing the cores: 2 CPU-bound runs on
    2 cores) or the second ends well before the two in turn (cores to spare)."""
    first, second = sorted(ended)
    return first > 1.3 * max(alone) or second < 0.9 * sum(alone)


def _check(h: Path, env: dict, model: str, written: list[str], inboxes: list[Path]) -> dict:
    led = [json.loads(x) for x in (h / "registry" / "ledger" / f"{model}.jsonl").read_text().split("\n") if x.strip()]
    intake, applied = Counter(), Counter()
    for r in led:
        if r.get("request_id") in written and r.get("event") in ("applied", "quarantined", "rejected", "superseded"):
            intake[r["request_id"]] += 1
            if r["event"] == "applied":
                applied[r["request_id"]] += 1
    p = _start(["versions", "--name", model, "--json"], env)
    so, _ = p.communicate(timeout=300)
    vs = json.loads(so)["versions"]
    linear = all(v["parent_version"] == prev["version"] for prev, v in zip(vs, vs[1:]))
    p = _start(["audit", "--name", model, "--verify", "--json"], env)
    so, _ = p.communicate(timeout=300)
    verified = p.returncode == 0 and json.loads(so.strip().split("\n")[-1])["verify"]["ok"]
    left = sum(len(list(d.glob("*.jsonl"))) for d in inboxes)
    lost = [i for i in written if intake[i] == 0]
    twice = [i for i in written if intake[i] > 1 or applied[i] > 1]
    return {"ok": linear and verified and not lost and not twice and left == 0, "versions": [v["version"] for v in vs],
            "linear": linear, "requests": len(written), "lost": lost, "applied_twice": twice, "inbox_left": left,
            "audit_verify": verified, "states": dict(Counter(r["event"] for r in led if r.get("request_id") in written))}


if __name__ == "__main__":
    main()
