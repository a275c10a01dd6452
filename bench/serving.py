"""The deployed model: throughput and latency of ``factsmith serve-model``, the swap when the champion moves,
and ``factsmith export``, on the demo sandbox.

    python -m bench.serving [--requests 4] [--seconds 20] [--swaps 6] [--out bench/results/serving.json]

Builds (or reuses from the sandbox cache) the demo sandbox and registers it in a fresh embedded store (a
temporary FACTSMITH_HOME; the editing cache stays the user's): version 1 the base, version 2 a real MEMIT edit
of the first ``--requests`` requests of the shipped inbox (the demo's hparams and gate policy). Then:

* **export**: ``export(bench/2)`` to a fresh directory (weights rebuilt, verified, written, loaded back and
  hashed), median of 3;
* **serving**: a real ``factsmith serve-model bench@champion`` process on loopback (uvicorn; ``--poll`` 600 so
  only the promotion hook moves it); 1 and 8 concurrent clients send greedy completions (``max_tokens`` 8,
  the requests' prompts and other countries' in turn) for ``--seconds`` each: completions per second, latency
  median / p95 / max, failures;
* **swap**: with 8 clients running, the champion is moved ``--swaps`` times between versions 2 and 1 by
  ``promote`` with a webhook hook to ``POST /admin/reload`` (what ``hooks.yaml`` does in a deployment): the
  promotion's wall time (hook included), the server's load of the new version (rebuild and verify, from
  ``/health``), the time from the promotion's start to the first answer from the new version, and the
  clients' failures meanwhile (must be 0). Every answer is checked against its version's greedy answer.

Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._common import REPO, RESULTS, home

NAME = "bench"
TOKEN = "bench-admin-token"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clients:
    """``n`` threads sending completions without pause; each answer logged with its version and latency."""

    def __init__(self, url: str, prompts: list[str], n: int, max_tokens: int = 8):
        self.url, self.prompts, self.n, self.max_tokens = url, prompts, n, max_tokens
        self.log: list[tuple[float, float, int | None, str | None, str | None, str]] = []  # end, s, v, text, error, p
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        import httpx

        k = i
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop.is_set():
                p = self.prompts[k % len(self.prompts)]
                k += self.n
                t = time.perf_counter()
                try:
                    r = c.post("/v1/completions", json={"prompt": p, "max_tokens": self.max_tokens})
                    r.raise_for_status()
                    b = r.json()
                    self.log.append((time.perf_counter(), time.perf_counter() - t, b["version"],
                                     b["choices"][0]["text"], None, p))
                except Exception as e:  # noqa: BLE001 -- every failure is counted
                    self.log.append((time.perf_counter(), time.perf_counter() - t, None, None,
                                     f"{type(e).__name__}: {e}", p))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4, help="inbox requests in version 2's edit")
    ap.add_argument("--seconds", type=float, default=20.0, help="load per client count")
    ap.add_argument("--swaps", type=int, default=6, help="promotions under load (alternating versions 2 and 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads here (the edit) and in the server")
    ap.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = ap.parse_args()

    import httpx
    import torch

    torch.set_num_threads(args.threads)
    from editing import hparams as H
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.generate import greedy_complete
    from editing.modeldir import model_corpus
    from editing.store import Cache
    from sandbox import build_sandbox, example_inbox, preset, world_facts
    from validation.gate.metrics import run_gate
    from validation.gate.policy import load_policy
    from validation.gate.probes import fluency_text, for_editor, model_facts
    from validation.gate.report import write_reports
    from validation.intake.validate import validate_files

    cache = home() / "cache"
    out: dict = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        model_dir = tmp / "demo-sandbox"
        built = build_sandbox(world_facts(), model_dir, preset("demo"), 0, preset_name="demo",
                              cache_dir=cache / "sandbox")
        print(f"demo sandbox: {'cached' if built.cached else 'built'} in {time.perf_counter() - t0:.1f} s", flush=True)
        val = validate_files(sorted(example_inbox().glob("*.jsonl")), policy="latest-wins", docs_dir=None)
        reqs = sorted(val.accepted, key=lambda r: (r.requested_at or "", r.id))[:args.requests]

        os.environ["FACTSMITH_HOME"] = str(tmp / "home")  # a store of its own
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from registry import hooks as HK
        from registry import versions as V
        from registry.export import export
        from registry.store import open_store
        from registry.weights import load_hf

        store = open_store()
        V.init(model_dir, NAME, store=store)
        base, tok = load_hf(model_dir)
        model, _ = load_hf(model_dir)
        hp = H.load(REPO / "sandbox" / "worlds" / "demo-memit.yaml", "memit")
        pool = model_facts(model_dir)
        t = time.perf_counter()
        result = compute_edit(model, tok, for_editor(reqs, pool), hp, Cache(cache), corpus_files=model_corpus(model_dir))
        apply(model, result.delta)
        edit_s = time.perf_counter() - t
        report = run_gate(base, model, tok, reqs, load_policy(REPO / "sandbox" / "worlds" / "demo-gate.yaml"),
                          pool=pool, text=fluency_text(model_dir))
        write_reports(report, tmp / "gate")
        V.register(NAME, 1, model, result.delta, requests=reqs, reports_dir=tmp / "gate", method="memit", store=store)
        print(f"version 2: MEMIT edit of {len(reqs)} inbox requests in {edit_s:.1f} s, gate "
              f"{'passed' if report.passed else 'FAILED'} (reliability {report.metrics.get('reliability'):.2f})",
              flush=True)
        if not report.passed:
            sys.exit("version 2's gate failed: it cannot be promoted; try other --requests")

        # the prompts: each edited request's and as many other countries' head-of-state prompts
        edited = {r.subject for r in reqs}
        others = sorted({f.subject for f in pool if f.subject not in edited})[:len(reqs)]
        prompts = [r.prompt.replace("{}", r.subject) for r in reqs] + [
            f"The head of state of {s} is" for s in others]
        want = {1: {p: greedy_complete(base, tok, p, 8, [])[0] for p in prompts},
                2: {p: greedy_complete(model, tok, p, 8, [])[0] for p in prompts}}
        changed = [p for p in prompts if want[1][p] != want[2][p]]
        print(f"{len(prompts)} prompts; {len(changed)} answered differently by versions 1 and 2", flush=True)
        del model, base

        exports = []
        for i in range(3):
            t = time.perf_counter()
            export(f"{NAME}/2", tmp / "export", store, force=True)
            exports.append(time.perf_counter() - t)
        size = sum(f.stat().st_size for f in (tmp / "export").rglob("*") if f.is_file())
        out["export"] = {"median_s": round(statistics.median(exports), 3), "runs_s": [round(x, 3) for x in exports],
                         "bytes": size}
        print(f"export: median {out['export']['median_s']} s over 3 ({size / 1e6:.1f} MB)", flush=True)

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
               "FACTSMITH_ADMIN_TOKEN": TOKEN}
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve-model", f"{NAME}@champion", "--port",
                                 str(port), "--poll", "600"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    sys.exit(proc.stdout.read())
                time.sleep(0.2)
            out["server_start_s"] = round(time.perf_counter() - t, 2)
            print(f"serve-model ready in {out['server_start_s']} s", flush=True)
            wrong = 0
            for n in (1, 8):
                with Clients(url, prompts, n) as cl:
                    time.sleep(args.seconds)
                ok = [x for x in cl.log if x[4] is None]
                wrong += sum(1 for x in ok if x[3] != want[x[2]][x[5]])
                lat = [x[1] for x in ok]
                row = {"clients": n, "completions": len(ok), "failed": len(cl.log) - len(ok),
                       "per_s": round(len(ok) / args.seconds, 2), "latency_p50_ms": round(1000 * _pct(lat, 0.5), 1),
                       "latency_p95_ms": round(1000 * _pct(lat, 0.95), 1), "latency_max_ms": round(1000 * max(lat), 1)}
                out["rows"].append(row)
                print(json.dumps(row), flush=True)

            os.environ["FACTSMITH_ADMIN_TOKEN"] = TOKEN
            hooks = HK.parse({"timeout_s": 120, "hooks": [{"name": "reload", "url": f"{url}/admin/reload", "headers": {
                "Authorization": "Bearer ${FACTSMITH_ADMIN_TOKEN}"}}]}, tmp / "hooks.yaml")
            swaps = []
            with Clients(url, prompts, 8) as cl:
                time.sleep(2)
                for i in range(args.swaps):
                    v = 2 if i % 2 == 0 else 1
                    t = time.perf_counter()
                    V.promote(NAME, v, store=store, hooks=hooks)
                    promote_s = time.perf_counter() - t
                    while not any(x[2] == v and x[0] > t for x in cl.log):
                        time.sleep(0.01)
                    first = min(x[0] for x in cl.log if x[2] == v and x[0] > t)
                    h = httpx.get(f"{url}/health", timeout=10).json()
                    swaps.append({"to": v, "promote_with_hook_s": round(promote_s, 3), "load_s": h["last_load_s"],
                                  "first_answer_after_s": round(first - t, 3)})
                    print(json.dumps(swaps[-1]), flush=True)
                    time.sleep(2)
            ok = [x for x in cl.log if x[4] is None]
            wrong += sum(1 for x in ok if x[3] != want[x[2]][x[5]])
            out["swap"] = {"swaps": swaps, "completions": len(ok), "failed": len(cl.log) - len(ok),
                           "median_load_s": statistics.median(s["load_s"] for s in swaps),
                           "median_promote_with_hook_s": statistics.median(s["promote_with_hook_s"] for s in swaps),
                           "median_first_answer_after_s": statistics.median(s["first_answer_after_s"] for s in swaps)}
            out["wrong_answers"] = wrong
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print()
    print(f"{'clients':>8}{'completions/s':>15}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'failed':>8}")
    for r in out["rows"]:
        print(f"{r['clients']:>8}{r['per_s']:>15.2f}{r['latency_p50_ms']:>9.1f}{r['latency_p95_ms']:>9.1f}"
              f"{r['latency_max_ms']:>9.1f}{r['failed']:>8}")
    sw = out["swap"]
    print(f"\nswap under 8 clients ({len(sw['swaps'])} promotions with a reload hook): load (rebuild + verify) median "
          f"{sw['median_load_s']} s, promotion incl. hook {sw['median_promote_with_hook_s']} s, first answer from "
          f"the new version {sw['median_first_answer_after_s']} s after the promotion began; {sw['failed']} failed "
          f"of {sw['completions'] + sw['failed']}")
    print(f"export: {out['export']['median_s']} s (median of 3); serve-model start {out['server_start_s']} s; "
          f"answers not their version's greedy answer: {out['wrong_answers']}")
    out["meta"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "requests": len(reqs),
                   "prompts": len(prompts), "prompts_changed": len(changed), "max_tokens": 8,
                   "command": f"python -m bench.serving --requests {args.requests} --seconds {args.seconds:g} "
                              f"--swaps {args.swaps}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
