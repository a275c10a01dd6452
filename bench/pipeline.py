"""Pipeline overhead: the fact_update flow's wall time minus its edit and gate time.

    python -m bench.pipeline [--sizes 10,100] [--out bench/results/pipeline.json]

On the demo sandbox (built or reused from the sandbox cache), for each size N: a fresh embedded registry (a
temporary FACTSMITH_HOME; the editing cache is the user's, so statistics are not part of the figure), the
sandbox registered as version 1, and an inbox of N requests that move facts between subjects (subject i of
a relation gets subject i+1's object: targets the model can say). The flow runs in-process, as
``factsmith run`` does, with bisection off (a failing batch is rejected whole: the figure is the pipeline's
cost, not the gate's verdict). Prefect's temporary API starts on the first flow call in the process; a
trivial flow is run first and its time reported as the start-up, so the rows show the steady state.
Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench._common import RESULTS, home
from editing import methods


def _requests(facts, n: int) -> list[dict]:
    by_rel: dict[str, list] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    out = []
    rels = sorted(by_rel, key=lambda r: -len(by_rel[r]))
    for rel in rels:
        fs = by_rel[rel]
        for i, f in enumerate(fs):
            new = next((g.target for g in fs[i + 1:] + fs[:i] if g.target != f.target), None)
            if new is None:
                continue
            out.append({"id": f"bench-{rel}-{i}", "subject": f.subject, "prompt": f.prompts[0], "target_new": new,
                        "target_true": f.target, "relation": rel, "requested_by": "bench",
                        "requested_at": "2025-01-01T00:00:00Z"})
            if len(out) == n:
                return out
    raise SystemExit(f"the demo sandbox has only {len(out)} facts to move; asked for {n}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100")
    ap.add_argument("--method", choices=methods.names(), default=methods.DEFAULT)
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    import torch

    from sandbox import build_sandbox, preset, world_facts
    from sandbox.trainer import model_facts

    cache = home() / "cache"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir = tmp / "demo-sandbox"
        t0 = time.perf_counter()
        built = build_sandbox(world_facts(), model_dir, preset("demo"), 0, preset_name="demo",
                              cache_dir=cache / "sandbox")
        print(f"demo sandbox: {'cached' if built.cached else 'built'} in {time.perf_counter() - t0:.1f} s", flush=True)
        facts = model_facts(model_dir)

        os.environ.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
                          PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from prefect import flow

        @flow
        def warm_up() -> int:
            return 1

        t0 = time.perf_counter()
        warm_up()
        start_s = time.perf_counter() - t0
        print(f"Prefect temporary API start + a trivial flow: {start_s:.1f} s", flush=True)

        from flows.flow import fact_update
        from registry.store import open_store
        from registry.versions import init

        for n in sizes:
            h = tmp / f"home-{n}"
            h.mkdir()
            (h / "cache").symlink_to(cache, target_is_directory=True)
            os.environ["FACTSMITH_HOME"] = str(h)
            init(model_dir, "demo", store=open_store())
            inbox = h / "inbox"
            inbox.mkdir()
            reqs = _requests(facts, n)
            (inbox / "requests.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reqs),
                                                  encoding="utf-8")
            t0 = time.perf_counter()
            res = fact_update(str(inbox), "demo", method=args.method, bisect=False)
            wall = time.perf_counter() - t0
            t = res["timings"]
            row = {"requests": n, "wall_s": round(wall, 2), "edit_s": t.get("edit", 0.0), "gate_s": t.get("gate", 0.0),
                   "overhead_s": round(wall - t.get("edit", 0.0) - t.get("gate", 0.0), 2),
                   "validate_s": t.get("validate"), "load_s": t.get("load"), "commit_s": t.get("commit"),
                   "move_s": t.get("move"), "pipeline_total_s": t.get("total"),
                   "prefect_s": round(wall - t.get("total", 0.0), 2), "version": res["version"],
                   "counts": res["counts"],
                   "gate": {k: res["gate"][k] for k in ("passed", "reliability", "generalization", "locality")}
                   if res["gate"] else None}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print()
    hdr = (f"{'requests':>9}{'wall s':>9}{'edit s':>9}{'gate s':>9}{'overhead s':>12}{'validate':>10}{'load':>7}"
           f"{'commit':>8}{'Prefect':>9}  outcome")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['requests']:>9}{r['wall_s']:>9.1f}{r['edit_s']:>9.1f}{r['gate_s']:>9.1f}{r['overhead_s']:>12.1f}"
              f"{r['validate_s'] or 0:>10.1f}{r['load_s'] or 0:>7.1f}{r['commit_s'] or 0:>8.1f}{r['prefect_s']:>9.1f}"
              f"  v{r['version']} {r['counts']}")
    print(f"\nPrefect's temporary API (first flow call in a process, not in the rows): {start_s:.1f} s")
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "method": args.method, "prefect_start_s": round(start_s, 2),
            "command": f"python -m bench.pipeline --sizes {args.sizes} --method {args.method}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
