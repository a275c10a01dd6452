"""Lifelong editing through the real pipeline: ``--runs`` scheduled runs of ``--per-run`` edits each, every run
editing the newest version again (registry versions, the method's state checked out and registered with each),
for each method; after each run, what the model says about *every* edit so far.

    python -m bench.sequential [--methods memit,alphaedit,rome] [--runs 20] [--per-run 50] [--records 1000]
    python -m bench.sequential --model DIR --world   # requests from the sandbox's own facts (any world)
    python -m bench.sequential --work DIR ...        # resumable: again with the same DIR continues each method

The gate runs on every run with its thresholds off (every version registers; its metrics are recorded, not
blocking: the point is to watch a method collapse, not to stop it). After each run, on the registered version
(rebuilt from the registry and verified), greedy decoding as the gate judges it:

* retention -- share of all edits so far whose prompt says the new target; realised retention -- of the edits
  said right after their own run (those the run realised), the share still said; batch efficacy -- the share of
  this run's own edits said; paraphrase likewise on their
  paraphrases; neighbourhood -- share of their neighbourhood prompts that still say the original answer, of
  those the unedited model says (so 1.0 is the unedited model's level), less any fact edited since; subject
  locality -- the edited subjects' other facts (the sandbox's, or the relation catalogue's phrasings the unedited
  model answers confidently) still said; other facts kept -- a fixed seeded sample of the facts of subjects no
  request edits (where every subject is edited, as on CounterFact, the sandbox's subject-less facts) still said;
* max norm growth of the edited matrices against the base, seconds per run, the method state's size.

Requests: CounterFact records the sandbox was trained on (bench/_common.py), or with ``--world`` swaps within
the sandbox's own relations (subject i takes the answer of another subject with the same relation), distinct
subjects first. Writes ``bench/results/sequential.json`` (``--out``) and a PNG of the curves beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _common as C
from . import _greedy as G

OUT = C.RESULTS / "sequential.json"
CHECKPOINTS = (250, 500, 1000, 2000)
OPEN_GATE = """# bench.sequential: thresholds off, every version registers; the metrics are recorded
min_reliability: 0.0
min_generalization: 0.0
min_subject_locality: 0.0
min_namesake_locality: 0.0
min_locality: 0.0
min_protected: 0.0
min_retention: 0.0
max_kl: 1.0e+9
max_entropy_drop: 1.0e+9
max_perplexity_ratio: 1.0e+9
max_norm_growth: 1.0e+9
locality_sample: 50
generation_tokens: 12
"""


def world_requests(model_dir: Path, n: int, seed: int) -> list:
    """``n`` requests from the sandbox's own facts: within each relation, a subject takes the answer of another
    subject, each request a distinct subject while there are enough; paraphrases are the fact's other phrasings,
    the neighbours two other subjects' facts of that relation."""
    from editing.requests import EditRequest
    from sandbox.trainer import model_facts

    facts = [f for f in model_facts(model_dir) if f.subject]
    rng = random.Random(f"{seed}:world")
    by_rel: dict[str, list] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    cands = []
    for rel, fs in sorted(by_rel.items()):
        for f in fs:
            others = [g for g in fs if g.target != f.target]
            if others:
                cands.append((f, rng.choice(others), rng.sample(others, min(2, len(others)))))
    rng.shuffle(cands)
    seen: set[str] = set()
    first, rest = [], []
    for c in cands:
        (rest if c[0].subject in seen else first).append(c)
        seen.add(c[0].subject)
    out = []
    for i, (f, g, nb) in enumerate((first + rest)[:n]):
        out.append(EditRequest(subject=f.subject, prompt=f.prompts[0], target_new=g.target, target_true=f.target,
                               id=f"w{i}", paraphrase_prompts=tuple(p.replace("{}", f.subject, 1) for p in f.prompts[1:3]),
                               neighborhood_prompts=tuple((h.prompts[0].replace("{}", h.subject, 1), h.target)
                                                          for h in nb)))
    return out


def native(r) -> dict[str, Any]:
    return {"id": r.id, "subject": r.subject, "prompt": r.prompt, "target_new": r.target_new,
            "target_true": r.target_true, "paraphrase_prompts": list(r.paraphrase_prompts),
            "neighborhood_prompts": [{"prompt": p, "target": t} for p, t in r.neighborhood_prompts],
            "requested_by": "bench.sequential", "source": "bench"}


def norm_growth(base, model) -> float:
    from validation.gate.measures import edited_matrices

    return max(edited_matrices(base, model).values(), default=1.0)


def run_method(method: str, args, bench, requests: list, facts: list, others: list, hparams_file: Path | None,
               work: Path, save=None) -> list[dict[str, Any]]:
    """The runs of one method in a registry of its own under ``work``; one row per run.

    Resumable: each row is appended to ``work/METHOD/rows.jsonl`` as it is measured, with a fingerprint of
    what the runs depend on (model, requests, batch size, hparams, seed) in ``run.json``. Started again on the
    same ``--work``, a method continues after its last row (a run killed half-way is finished by the
    pipeline's own recovery: the inbox file is still there, or a committed run already moved it); a
    different fingerprint starts the method over."""
    import torch

    from flows import pipeline as P
    from registry import versions as V
    from registry.lineage import rebuild
    from registry.store import open_store

    home = work / method
    fingerprint = _fingerprint(method, args, bench, requests, others, hparams_file)
    rows = _resumed(home, fingerprint)
    if not rows:
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        (home / "cache").symlink_to(bench.cache.root, target_is_directory=True)  # statistics computed once
        (home / "run.json").write_text(json.dumps(fingerprint, indent=1) + "\n", encoding="utf-8")
    os.environ["FACTSMITH_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    policy = home / "gate_policy.yaml"
    policy.write_text(OPEN_GATE, encoding="utf-8")
    store = open_store()
    name = f"seq-{method}"
    if not rows:
        V.init(bench.model_dir, name, store=store)
    else:
        print(f"{method}: resuming after run {len(rows)} (version {rows[-1]['version']})", file=sys.stderr)
    base = bench.model
    probes = []
    for k in range(args.runs):
        batch = requests[k * args.per_run:(k + 1) * args.per_run]
        if not batch:
            break
        probes.append(G.GreedyProbes.choose(base, bench.tokenizer, batch, facts, 0, args.seed))
        if k < len(rows):
            continue
        inbox = home / "inbox"
        inbox.mkdir(exist_ok=True)
        file = inbox / f"run-{k + 1:03d}.jsonl"
        done = any((inbox / "processed").glob(f"*-{file.name}"))  # moved there (time-stamped) by its commit
        resumed = file.exists() or done
        if not done:
            file.write_text("".join(json.dumps(native(r)) + "\n" for r in batch), encoding="utf-8")
        t0 = time.perf_counter()
        out = P.run(P.RunOptions(name=name, method=method, gate_policy_file=policy, bisect=False,
                                 hparams_file=hparams_file, requested_by="bench"), inbox, store)
        seconds = time.perf_counter() - t0
        version = out.version
        if version is None and resumed:  # a killed run had committed it already
            newest = V.versions(name, store)[-1]
            if newest.version > (rows[-1]["version"] if rows else 1):
                version = newest.version
        if version is None:
            C.die(f"{method} run {k + 1}: nothing registered ({out.counts()})")
        model, tok, info = rebuild(name, version, store)
        # a neighbour or subject probe that is itself a fact edited since is no longer expected to stay
        edited_texts = {r.text for r in requests[:(k + 1) * args.per_run]}
        current = [dataclasses.replace(p, neighbour=[x for x in p.neighbour if x[0] not in edited_texts],
                                       subject=[x for x in p.subject if x[0] not in edited_texts]) for p in probes]
        with torch.no_grad():
            parts = [p.score(model, tok) for p in current]
        said = G.summarize_greedy(parts)
        now = "".join("1" if x else "0" for p in parts for x in p["rewrite"])  # every edit so far, in order
        own = "".join(r["said"][(r["run"] - 1) * args.per_run:r["run"] * args.per_run] for r in rows)
        own += now[k * args.per_run:]  # each edit as said right after its own run: the edits it realised
        held = [a == "1" for a, b in zip(now, own) if b == "1"]
        other = G.greedy_says(model, tok, [p for p, _ in others], [t for _, t in others])
        gate = out.gate.metrics if out.gate is not None else {}
        row = {"method": method, "run": k + 1, "edits": sum(len(p.rewrite) for p in probes),
               "applied": out.counts()["applied"], "version": version,
               "retention": said["efficacy_greedy"], "batch_efficacy": C.share([x == "1" for x in now[k * args.per_run:]]),
               "realised": len(held), "realised_retention": C.share(held), "paraphrase": said["paraphrase_greedy"],
               "neighbourhood": said["neighbourhood_greedy"], "subject_locality": said["subject_locality"],
               "other_facts_kept": C.share(other), "max_norm_growth": norm_growth(base, model),
               "seconds": round(seconds, 2), "state_bytes": int(info.tags.get("state_bytes") or 0),
               "gate": {m: gate.get(m) for m in ("reliability", "generalization", "subject_locality", "locality",
                                                 "retention", "perplexity_ratio")},
               "said": now}
        if resumed:
            row["resumed"] = True  # its seconds are the finishing run's only
        rows.append(row)
        with (home / "rows.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
        if save is not None:
            save(rows)
    return rows


def _fingerprint(method: str, args, bench, requests: list, others: list, hparams_file: Path | None) -> dict[str, Any]:
    import hashlib

    from editing.delta import weights_sha256

    hp = hashlib.sha256(hparams_file.read_bytes()).hexdigest() if hparams_file else "shipped preset"
    return {"method": method, "model_sha256": weights_sha256(bench.model), "requests": C.ids_digest(requests),
            "edits": len(requests), "per_run": args.per_run, "seed": args.seed, "others": hashlib.sha256(repr(others).encode()).hexdigest()[:16],
            "hparams": hp}


def _resumed(home: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows measured so far under ``home`` when its runs were made with ``fingerprint``, else []."""
    try:
        before = json.loads((home / "run.json").read_text(encoding="utf-8"))
        lines = (home / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return []
    if before != fingerprint:
        print(f"{home}: made with other settings ({before}); starting over", file=sys.stderr)
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a row cut by a kill: measured again
            break
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("retention", "realised_retention", "batch_efficacy", "paraphrase", "neighbourhood", "subject_locality",
            "other_facts_kept", "max_norm_growth")
    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    for ax, col in zip(axes.flat, cols):
        for m in dict.fromkeys(r["method"] for r in rows):
            xs = [r for r in rows if r["method"] == m]
            ax.plot([r["edits"] for r in xs], [r.get(col) for r in xs], marker=".", label=m)
        ax.set_title(col.replace("_", " "))
        ax.set_xlabel("edits so far")
        if col != "max_norm_growth":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap, OUT)
    ap.add_argument("--methods", default="memit,alphaedit,rome")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--per-run", type=int, default=50)
    ap.add_argument("--other-sample", type=int, default=200, help="other subjects' facts checked after each run")
    ap.add_argument("--world", action="store_true",
                    help="requests from the sandbox's own facts (swaps within a relation), not CounterFact")
    ap.add_argument("--work", type=Path, default=None,
                    help="registries of the runs (default: a temporary folder); the bench resumes from one given "
                         "again, each method after its last measured run")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    from editing import methods as M

    for m in methods:
        if m not in M.METHODS:
            C.die(f"--methods: unknown method {m!r}; choose from {', '.join(M.names())}")
    if args.world:
        if args.model is None:
            C.die("--world needs --model DIR")
        args.data = Path(__file__)  # not read
    bench = C.open_bench(args) if not args.world else _world_bench(args)
    n = args.runs * args.per_run
    requests = world_requests(bench.model_dir, n, args.seed) if args.world else bench.requests.requests[:n]
    if len(requests) < n:
        print(f"only {len(requests)} requests for {args.runs} x {args.per_run}", file=sys.stderr)
    facts = G.model_facts(bench.model_dir)
    edited = {r.subject for r in requests}
    pool = [(f.prompt, f.target) for f in facts if f.subject not in edited]
    if len(pool) < args.other_sample:  # CounterFact: every subject is edited; its subject-less facts stay
        from sandbox.trainer import model_facts

        pool += [(f.prompts[0], f.target) for f in model_facts(bench.model_dir) if not f.subject]
    random.Random(f"{args.seed}:other").shuffle(pool)
    base_ok = G.greedy_says(bench.model, bench.tokenizer, [p for p, _ in pool], [t for _, t in pool])
    others = [x for x, ok in zip(pool, base_ok) if ok][:args.other_sample]
    from editing import hparams as H

    by_method = {H.load(p).method: p for p in args.hparams}
    work = args.work or Path(tempfile.mkdtemp(prefix="factsmith-sequential-"))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    from editing.delta import weights_sha256

    same = {"model_sha256": weights_sha256(bench.model), "requests_digest": C.ids_digest(requests),
            "per_run": args.per_run, "seed": args.seed}
    # A method's runs can take a session of their own: the rows of methods not run this time are kept from the
    # file when they were measured on the same model, requests and batch size (each row has its date).
    kept: list[dict[str, Any]] = []
    if args.out.is_file():
        old = json.loads(args.out.read_text(encoding="utf-8"))
        if all(old["meta"].get(k) == v for k, v in same.items()):
            kept = [r for r in old["rows"] if r["method"] not in methods]
    today = time.strftime("%Y-%m-%d")

    def save(current: list[dict[str, Any]]) -> None:  # after every run: a long bench shows its curves as it goes
        meta = C.meta(args, C.command_line("bench.sequential"),
                      {"methods": methods, "runs": args.runs, "requests": len(requests),
                       "world": bool(args.world), "model_dir": str(bench.model_dir), "others": len(others),
                       "work": str(work), "seconds": round(time.perf_counter() - t0, 1), **same,
                       "kept_methods": sorted({r["method"] for r in kept})})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = kept + [{**r, "date": r.get("date", today)} for r in rows + current]
        args.out.write_text(json.dumps({"meta": meta, "rows": out}, indent=1) + "\n", encoding="utf-8")
        plot(out, args.out.with_suffix(".png"))

    for m in methods:
        rows += run_method(m, args, bench, requests, facts, others, by_method.get(m), work, save)
        save([])
    rows = kept + rows
    marks = sorted({r["edits"] for r in rows if r["edits"] in CHECKPOINTS} | {max(r["edits"] for r in rows)})
    C.table([r for r in rows if r["edits"] in marks],
            [("method", "method", ""), ("edits", "edits", "n"), ("retention", "retention", "%"),
             ("realised_retention", "of realised", "%"), ("batch_efficacy", "batch", "%"),
             ("paraphrase", "paraphrase", "%"), ("neighbourhood", "neighbourhood", "%"),
             ("subject_locality", "subject", "%"), ("other_facts_kept", "others", "%"),
             ("max_norm_growth", "norm", "x"), ("seconds", "s/run", "s"), ("state_bytes", "state B", "n")])
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _world_bench(args):
    import torch

    from editing import modeldir
    from editing.store import Cache

    torch.set_num_threads(args.threads)
    model, tok = modeldir.load(args.model, args.device)
    return C.Bench(args.model, model, tok, C.RequestSet([], 0, {}),
                   Cache(args.cache if args.cache is not None else C.home() / "cache"))


if __name__ == "__main__":
    main()
