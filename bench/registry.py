"""Registry cost per version on the demo sandbox, with real edits.

    python -m bench.registry [--versions 10] [--method memit] [--backend sqlite|postgres] [--out FILE]

Builds (or reuses from the sandbox cache) the demo sandbox, validates the shipped inbox of 2024–2025
changes of government (policy latest-wins), and registers a chain of ``--versions`` edit versions in a fresh
embedded store (a temporary FACTSMITH_HOME): each version applies the next share of the accepted requests
with a real ROME/MEMIT edit of the previous version, runs the real gate, and registers the result. Per
version it reports the time of the edit, the gate and the registration, and the bytes the version adds to
the store; then the store's growth against keeping every version's weights whole, the time to load the
newest version (base + patches, hash-checked) and its bit-exactness against the model in memory, and a
``rollback --to 1``. Prints a table; writes JSON.

``--backend postgres`` runs the same chain through the at-scale setup (README "Scaling out"), started on
127.0.0.1 for the run (:mod:`bench.servers`): a private PostgreSQL cluster, and an ``mlflow server`` on it with
basic auth and proxied artifacts (``--serve-artifacts``); the store's bytes are then the server's artifact
directory plus FACTSMITH_HOME's registry directory (the ledger), and a client with a wrong password is tried
(refused). Default output ``bench/results/registry_postgres.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench._common import RESULTS, home
from editing import methods

NAME = "demo"
ADMIN_PW = "bench-admin-pw"


def _bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file())


def _chunks(items: list, n: int) -> list[list]:
    """``items`` in ``n`` consecutive shares, as even as possible (no empty share when len >= n)."""
    n = max(1, min(n, len(items)))
    q, r = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(items[i:i + size])
        i += size
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10, help="edit versions to register after the base")
    ap.add_argument("--method", choices=methods.names(), default=methods.DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                    help="the embedded sqlite store, or PostgreSQL behind an mlflow server (both started here)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.out = args.out or RESULTS / ("registry.json" if args.backend == "sqlite" else "registry_postgres.json")

    import torch

    torch.set_num_threads(args.threads)
    from editing import hparams as H
    from editing.delta import apply, weights_sha256
    from editing.engine import compute_edit
    from editing.modeldir import model_corpus
    from editing.store import Cache
    from sandbox import build_sandbox, example_inbox, preset, world_facts
    from validation.gate.metrics import run_gate
    from validation.gate.probes import fluency_text, for_editor, model_facts
    from validation.gate.report import write_reports
    from validation.intake.validate import validate_files

    cache = home() / "cache"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp_s, ExitStack() as servers_up:
        tmp = Path(tmp_s)
        model_dir = tmp / "demo-sandbox"
        built = build_sandbox(world_facts(), model_dir, preset("demo"), 0, preset_name="demo",
                              cache_dir=cache / "sandbox")
        print(f"demo sandbox: {'cached' if built.cached else 'built'} in {time.perf_counter() - t0:.1f} s", flush=True)

        inbox = sorted(example_inbox().glob("*.jsonl"))
        val = validate_files(inbox, policy="latest-wins", docs_dir=None)
        requests = sorted(val.accepted, key=lambda r: (r.requested_at or "", r.id))
        shares = _chunks(requests, args.versions)
        print(f"inbox: {len(requests)} accepted, {len(val.superseded)} superseded, {len(val.quarantined)} quarantined; "
              f"{len(shares)} versions of {', '.join(str(len(s)) for s in shares)} request(s)", flush=True)

        # a fresh store of its own; the editing cache (statistics) stays the user's
        os.environ["FACTSMITH_HOME"] = str(tmp / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        stored = [tmp / "home" / "registry"]  # what the store's bytes are counted over
        if args.backend == "postgres":
            from bench import servers

            t = time.perf_counter()
            pg = servers_up.enter_context(servers.postgres("bench-pg-pw"))
            if pg is None:
                print("error: PostgreSQL server binaries (initdb, pg_ctl) or a 'postgres' user are absent",
                      file=sys.stderr)
                sys.exit(2)
            os.environ.update(servers_up.enter_context(
                servers.mlflow_server(tmp, f"{pg}/mlflow", dict(os.environ), pg, ADMIN_PW)))
            stored.append(tmp / "mlartifacts")
            print(f"PostgreSQL and mlflow server (basic auth, proxied artifacts) up in "
                  f"{time.perf_counter() - t:.1f} s: {os.environ['MLFLOW_TRACKING_URI']}", flush=True)
        from registry import versions as V
        from registry.lineage import load_model
        from registry.store import open_store
        from registry.weights import load_hf

        store = open_store()
        t = time.perf_counter()
        V.init(model_dir, NAME, store=store)
        init_s = time.perf_counter() - t
        init_bytes = _bytes(stored)
        whole = (model_dir / "model.safetensors").stat().st_size
        print(f"init: {init_s:.2f} s, store {init_bytes / 1e6:.2f} MB (model.safetensors {whole / 1e6:.2f} MB)",
              flush=True)

        hp = H.load(H.builtin_path(args.method, "sandbox"), args.method)
        corpus = model_corpus(model_dir)
        pool, text = model_facts(model_dir), fluency_text(model_dir)
        edit_store = Cache(cache)
        model, tok = load_hf(model_dir)
        rows = []
        for i, share in enumerate(shares, start=1):
            parent = copy.deepcopy(model)
            t = time.perf_counter()
            result = compute_edit(model, tok, for_editor(share, pool), hp, edit_store,
                                  corpus_files=corpus)
            apply(model, result.delta)
            edit_s = time.perf_counter() - t
            t = time.perf_counter()
            report = run_gate(parent, model, tok, share, None, pool=pool, text=text)
            gate_s = time.perf_counter() - t
            reports = tmp / f"gate-{i}"
            write_reports(report, reports)
            before = _bytes(stored)
            t = time.perf_counter()
            info = V.register(NAME, i, model, result.delta, requests=share, reports_dir=reports, method=args.method,
                              store=store)
            reg_s = time.perf_counter() - t
            added = _bytes(stored) - before
            rows.append({"version": info.version, "requests": len(share), "gate_passed": report.passed,
                         "reliability": report.metrics.get("reliability"), "locality": report.metrics.get("locality"),
                         "edit_s": round(edit_s, 2), "gate_s": round(gate_s, 2), "register_s": round(reg_s, 2),
                         "added_bytes": added, "store_bytes": _bytes(stored),
                         "whole_weights_bytes": whole * (i + 1)})
            print(json.dumps(rows[-1]), flush=True)
            del parent

        newest = rows[-1]["version"]
        t = time.perf_counter()
        loaded, _ = load_model(f"{NAME}/{newest}", store=store)
        load_s = time.perf_counter() - t
        sa, sb = loaded.state_dict(), model.state_dict()
        exact = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert weights_sha256(loaded) == weights_sha256(model)
        before = _bytes(stored)
        t = time.perf_counter()
        rb = V.rollback_to(NAME, 1, reason="bench", store=store)
        rollback_s = time.perf_counter() - t
        rollback_bytes = _bytes(stored) - before
        if args.backend == "postgres":  # a client with a wrong password: refused by the server
            from registry.versions import versions

            good = os.environ["MLFLOW_TRACKING_PASSWORD"]
            os.environ["MLFLOW_TRACKING_PASSWORD"] = "not-the-password"
            try:
                versions(NAME, open_store())
                wrong_pw = "accepted"
            except Exception as e:  # noqa: BLE001 -- the figure: what the client was told
                wrong_pw = f"refused: {type(e).__name__}: {str(e)[:160]}"
            finally:
                os.environ["MLFLOW_TRACKING_PASSWORD"] = good
            print(f"wrong password: {wrong_pw}", flush=True)
        edit_bytes = [r["added_bytes"] for r in rows]
        summary = {
            "init_s": round(init_s, 2), "init_bytes": init_bytes, "model_safetensors_bytes": whole,
            "versions": len(rows), "requests": len(requests),
            "register_s_mean": round(sum(r["register_s"] for r in rows) / len(rows), 2),
            "register_s_max": max(r["register_s"] for r in rows),
            "added_bytes_mean": round(sum(edit_bytes) / len(edit_bytes)),
            "store_bytes_after": rows[-1]["store_bytes"], "whole_weights_bytes_after": rows[-1]["whole_weights_bytes"],
            "load_newest_s": round(load_s, 3), "load_newest_bit_exact": exact,
            "rollback_version": rb.version, "rollback_s": round(rollback_s, 2), "rollback_bytes": rollback_bytes,
            "backend": args.backend,
        }
        if args.backend == "postgres":
            summary["wrong_password"] = wrong_pw

    print()
    hdr = f"{'v':>3}{'reqs':>6}{'gate':>8}{'edit s':>9}{'gate s':>9}{'register s':>12}{'added MB':>10}{'store MB':>10}{'whole MB':>10}"
    print(hdr)
    print("-" * len(hdr))
    print(f"{1:>3}{0:>6}{'-':>8}{'-':>9}{'-':>9}{init_s:>12.2f}{init_bytes / 1e6:>10.2f}{init_bytes / 1e6:>10.2f}"
          f"{whole / 1e6:>10.2f}")
    for r in rows:
        print(f"{r['version']:>3}{r['requests']:>6}{'passed' if r['gate_passed'] else 'FAILED':>8}{r['edit_s']:>9.2f}"
              f"{r['gate_s']:>9.2f}{r['register_s']:>12.2f}{r['added_bytes'] / 1e6:>10.2f}{r['store_bytes'] / 1e6:>10.2f}"
              f"{r['whole_weights_bytes'] / 1e6:>10.2f}")
    print(f"\nload version {newest} (base + {len(rows)} patches, hash-checked): {summary['load_newest_s']} s, "
          f"bit-exact: {exact}; rollback --to 1 (version {rb.version}): {summary['rollback_s']} s, "
          f"{rollback_bytes} bytes")
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "method": args.method,
            "command": f"python -m bench.registry --versions {args.versions} --method {args.method} "
                       f"--backend {args.backend}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
