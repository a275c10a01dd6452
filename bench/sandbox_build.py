"""Benchmark: sandbox builds — wall time, train and held-out phrasing accuracy.

    python -m bench.sandbox_build [--only tiny,demo,counterfact] [--out bench/results/sandbox_build.json]

Builds without the cache (every row is a real training run) into a temporary directory; prints a table
and writes JSON. ``--keep`` then stores each build in the sandbox cache (FACTSMITH_HOME/cache/sandbox) under
its build key, where bench/quality.py and bench/speed.py find it instead of training again. The CounterFact row needs ../shared/data (skipped where absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACTSMITH_SHARED_DATA", REPO.parent / "shared" / "data"))


def cases():
    from sandbox import load_facts, world_facts

    yield "tiny", "tiny", lambda: world_facts(subjects=30), "built-in world, first 30 countries"
    yield "demo", "demo", lambda: world_facts(), "built-in world, 51 countries"
    cf = SHARED / "counterfact" / "counterfact-train.json"
    if cf.exists():
        yield "counterfact", "bench", lambda: load_facts(cf, limit=1000), "CounterFact-train, first 1,000 records"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="tiny,demo,counterfact")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sandbox_build.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset field for every case, e.g. --set n_inner=2048 (repeatable)")
    ap.add_argument("--keep", action="store_true", help="store each build in the sandbox cache (where the "
                    "editing benchmarks look for it)")
    args = ap.parse_args()
    from sandbox import build_sandbox, preset
    from sandbox.trainer import _atomic_dir, read_manifest

    from bench import _common as C
    from bench._common import home

    overrides = C.preset_overrides(args.set)
    rows = []
    wanted = set(args.only.split(","))
    for name, preset_name, load, what in cases():
        if name not in wanted:
            continue
        facts = load()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = build_sandbox(facts, Path(tmp) / "m", preset(preset_name, **overrides), seed=args.seed, preset_name=preset_name)
            wall = time.perf_counter() - t0
            if args.keep:
                entry = home() / "cache" / "sandbox" / r.manifest["key"]
                if read_manifest(entry) is None:
                    _atomic_dir(entry, lambda tmp_dir: shutil.copytree(r.path, tmp_dir, dirs_exist_ok=True))
                print(f"{name}: kept in {entry}", flush=True)
        m = r.manifest
        row = {
            "case": name, "what": what, "preset": preset_name, "overrides": overrides, "facts": m["facts"]["facts"],
            "subjects": m["facts"]["subjects"], "train_probes": m["accuracy"]["train_probes"],
            "heldout_probes": m["accuracy"]["heldout_probes"], "steps": m["train"]["steps"],
            "epochs": m["train"]["epochs"], "build_seconds": round(wall, 1), "train_seconds": m["train"]["seconds"],
            "train_accuracy": m["accuracy"]["train"], "heldout_accuracy": m["accuracy"]["heldout"],
            "subjectless_accuracy": m["accuracy"]["subjectless"], "parameters": m["model"]["parameters"],
            # bfloat16 autocast (CPUs with AVX-512 BF16 / AMX) trains about twice as fast, and other weights
            "bf16_autocast": m["train"].get("bf16_autocast"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    hdr = f"{'case':<12}{'facts':>7}{'steps':>7}{'build s':>9}{'train acc':>11}{'held-out acc':>14}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ho = "n/a" if r["heldout_accuracy"] is None else f"{r['heldout_accuracy']:.1%}"
        print(f"{r['case']:<12}{r['facts']:>7}{r['steps']:>7}{r['build_seconds']:>9}{r['train_accuracy']:>11.1%}{ho:>14}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": "python -m bench.sandbox_build --only " + args.only
            + "".join(f" --set {kv}" for kv in args.set)}
    # rows of cases not run this time are kept from the previous file
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    merged = [r for r in old if r["case"] not in {x["case"] for x in rows}] + rows
    order = ["tiny", "demo", "counterfact"]
    merged.sort(key=lambda r: order.index(r["case"]) if r["case"] in order else len(order))
    args.out.write_text(json.dumps({"meta": meta, "rows": merged}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
