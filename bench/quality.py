"""Benchmark: edit quality and cost of ROME and MEMIT on the CounterFact sandbox.

    python -m bench.quality [--only rome,rome-seq,memit-10,memit-100,memit-1000] [--n 100] [--records 1000]
                            [--engine after|before] [--batches N] [--other-sample 200]
                            [--model DIR] [--hparams FILE] [--device cpu] [--threads 2] [--seed 0]
                            [--out bench/results/quality.json]

The model is a sandbox trained on the first ``--records`` CounterFact-train records (built with the bench
preset, or reused from FACTSMITH_HOME's cache), edited with the same records' counterfactuals: only facts
the sandbox was trained on, so p_true is the model's own knowledge.

Cases (each batch or single edit on fresh weights: compute, apply, score, revert):

* ``rome``: ``--n`` single ROME edits;
* ``rome-seq``: the same requests edited one after another in one compute_edit call, scored at the end;
* ``memit-10`` / ``memit-100`` / ``memit-1000``: 10 / up to 3 / 1 consecutive MEMIT batches of that size
  (a sandbox with fewer valid records gets one shorter batch, marked ``short_batch``).

Scores as CounterFact defines them (ROME's code): per prompt, the mean per-token NLL of the new target
against the true one. efficacy = share of edits with p_new > p_true on the edited prompt, paraphrase = the
same on the rephrased prompt, neighbourhood = share of neighbour prompts where the neighbour's own truth
still beats the new target; all three also before the edit, and top-1 (greedy decoding gives the new
target) after. The same three scores are also given over the requests whose new target is an answer the
sandbox was trained to give (``*_trained_target``, ``trained_target_share``; greedy efficacy and paraphrase
too): many CounterFact counterfactuals are words the sandbox never says. Times are compute_edit's phases per edit;
edits/s = edits / compute seconds; peak memory is the case's peak RSS (CPU) or peak allocated CUDA memory. Rows of cases not run are kept in the file.

What the model *says*, as the gate judges it (greedy decoding begins with the answer, validation.gate.answers.says):
``efficacy_greedy`` and ``paraphrase_greedy`` (the new target), and the shares of facts the base model said
that the edited one still says: ``neighbourhood_greedy`` (the records' locality prompts), ``subject_locality``
(the edited subjects' other facts in the sandbox's facts.jsonl: few, a CounterFact subject rarely has two
records) and ``other_facts_kept`` (a seeded sample of ``--other-sample`` facts of subjects the call did not
edit). ``realized_*``: MEMIT's realised share of each target residual (editing.methods.memit.solve.MemitTimes.realized).

``--engine after`` (default) edits as the pipeline does since issue 20: the shipped sandbox presets, each
request with its subject's other facts to keep and a subject-first phrasing (validation.gate.probes.keep_templates,
rewrite_templates). ``--engine before``: the presets as they were before it (``bench/hparams/*-before-issue20``:
the loss stop, 120 steps) and the bare requests; results go to ``quality_before.json`` unless ``--out`` says.
``--batches N`` edits at most N batches (MEMIT) or N requests (ROME) of each case.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import _common as C
from . import _greedy as G

CASES = ["rome", "rome-seq", "memit-10", "memit-100", "memit-1000"]
MEMIT_BATCHES = {"memit-10": (10, 10), "memit-100": (100, 3), "memit-1000": (1000, 1)}  # case -> (size, batches)


def batches_for(requests: list, size: int, wanted: int) -> tuple[list[list], bool]:
    """Consecutive batches of ``size``; with fewer requests than one batch, one short batch of them all."""
    full = min(wanted, len(requests) // size)
    if full:
        return [requests[i * size:(i + 1) * size] for i in range(full)], False
    return [requests], True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    ap.add_argument("--n", type=int, default=100, help="ROME edits (rome, rome-seq)")
    ap.add_argument("--engine", choices=("after", "before"), default="after",
                    help="edit as the pipeline does (after issue 20) or as before it (bench/hparams/*-before-issue20)")
    ap.add_argument("--batches", type=int, default=None, help="at most this many MEMIT batches per case")
    ap.add_argument("--other-sample", type=int, default=200, help="other subjects' facts probed per edit call")
    C.add_common_args(ap, C.RESULTS / "quality.json")
    args = ap.parse_args()
    if args.engine == "before":
        if args.out == C.RESULTS / "quality.json":
            args.out = C.RESULTS / "quality_before.json"
        if not args.hparams:
            args.hparams = sorted((C.REPO / "bench" / "hparams").glob("*-before-issue20.yaml"))
    wanted = [c for c in args.only.split(",") if c]
    bad = [c for c in wanted if c not in CASES]
    if bad:
        C.die(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(CASES)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from editing import delta as D
    from editing.engine import compute_edit
    from editing.hparams import to_dict
    from editing.modeldir import model_corpus

    hps = C.load_hparams(args.hparams)
    bench = C.open_bench(args)
    model_dir, model, tok, rs, store = bench.model_dir, bench.model, bench.tokenizer, bench.requests, bench.cache
    reqs = rs.requests
    base_hash = D.weights_sha256(model)
    corpus = model_corpus(model_dir)  # a sandbox's training text, as factsmith edit uses
    known = C.trained_objects(model_dir)
    facts = G.model_facts(model_dir)
    if args.engine == "after":
        reqs = G.with_probes(reqs, facts, seed=args.seed)

    # Scores before any edit, once per request (every case edits a prefix of the same seeded order).
    before_cache: dict[str, dict[str, list]] = {}

    def before(batch: list) -> list[dict[str, list]]:
        todo = [r for r in batch if r.id not in before_cache]
        if todo:
            for r, sc in zip(todo, C.score(model, tok, todo)):
                before_cache[r.id] = sc
        return [before_cache[r.id] for r in batch]

    def run(batch: list, hp, stats_flag: list[int]) -> tuple[list[dict[str, list]], dict[str, list[bool]],
                                                          dict[str, float], dict, float]:
        """choose the greedy probes, compute, apply, score, revert: the scores after (per request), the greedy
        probes' results, compute_edit's timings and details, seconds of probing, apply and scoring."""
        t0 = time.perf_counter()
        probes = G.GreedyProbes.choose(model, tok, batch, facts, args.other_sample, args.seed)
        t_probe = time.perf_counter() - t0
        flag = {"computed": False}

        def on_event(phase, detail):
            if phase == "stats_progress":
                flag["computed"] = True

        res = compute_edit(model, tok, batch, hp, store, corpus_files=corpus, on_event=on_event)
        stats_flag[0] += int(flag["computed"])
        t0 = time.perf_counter()
        applied = D.apply(model, res.delta)
        try:
            after = C.score(model, tok, batch)
            greedy = probes.score(model, tok)
        finally:
            applied.revert()
        return after, greedy, res.timings, res.details, time.perf_counter() - t0 + t_probe

    rows = []
    for case in [c for c in CASES if c in wanted]:
        method = "rome" if case.startswith("rome") else "memit"
        hp = hps[method]
        short = False
        if case == "rome":
            groups = [[r] for r in reqs[:args.n]][:args.batches]
        elif case == "rome-seq":
            groups = [reqs[:args.n]]
        else:
            size, n_batches = MEMIT_BATCHES[case]
            groups, short = batches_for(reqs, size, min(n_batches, args.batches or n_batches))
        n = sum(len(g) for g in groups)
        print(f"{case}: {n} edits in {len(groups)} compute_edit call(s)", file=sys.stderr, flush=True)
        timings: dict[str, float] = {}
        afters, befores, edited = [], [], []  # per request, in order
        greedy_parts, realized, sub_batches = [], [], 0
        stats_flag = [0]
        score_s = 0.0
        with C.PeakMemory(args.device) as mem:
            for g in groups:
                befores += before(g)
                after, greedy, t, details, s = run(g, hp, stats_flag)
                afters += after
                greedy_parts.append(greedy)
                realized += details.get("realized", [])
                sub_batches += details.get("sub_batches", 1)
                edited += g
                C.add_timings(timings, t)
                score_s += s
            peak = mem.read()
        assert D.weights_sha256(model) == base_hash, "the model must be unchanged after every case"
        q = C.summarize(C.merge_scores(befores), C.merge_scores(afters))
        q.update(G.summarize_greedy(greedy_parts))
        if realized:
            q.update({"realized_mean": round(sum(realized) / len(realized), 4), "realized_min": round(min(realized), 4),
                      "realized_below_095": round(sum(x < 0.95 for x in realized) / len(realized), 4),
                      "sub_batches": sub_batches})
        if known is not None:  # the same scores over the requests whose new target the sandbox can say
            keep = [i for i, r in enumerate(edited) if r.target_new in known]
            qk = C.summarize(C.merge_scores(befores[i] for i in keep), C.merge_scores(afters[i] for i in keep))
            q.update({"trained_target_share": round(len(keep) / n, 4),
                      **{f"{k}_trained_target": qk[k] for k in ("efficacy", "paraphrase", "neighbourhood")}})
            # greedy too: the rewrite probes are one per request, the paraphrase probes each request's in order
            said = [x for p in greedy_parts for x in p["rewrite"]]
            said_para = [x for p in greedy_parts for x in p["paraphrase"]]
            owner = [i for i, r in enumerate(edited) for _ in r.paraphrase_prompts]
            assert len(said) == n and len(said_para) == len(owner), "greedy probes out of step with the requests"
            trained = set(keep)
            q.update({"efficacy_greedy_trained_target": C.share([said[i] for i in keep]),
                      "paraphrase_greedy_trained_target": C.share([x for x, i in zip(said_para, owner) if i in trained])})
        row = {"case": case, "method": method, "engine": args.engine, "edits": n, "calls": len(groups),
               "batch_size": len(groups[0]) if method == "memit" else (n if case == "rome-seq" else 1),
               "short_batch": short, **q,
               **{f"s_per_edit_{k}": round(timings[k] / n, 4) for k in C.PHASES},
               "compute_s": round(timings["total"], 2), "edits_per_s": round(n / timings["total"], 3),
               "score_s": round(score_s, 2), "stats_computed": stats_flag[0], **peak,
               "request_ids_sha256": C.ids_digest([r for g in groups for r in g]),
               "hparams": to_dict(hp)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    C.table(rows, [("case", "case", ""), ("edits", "n", "n"), ("efficacy", "efficacy", "%"),
                   ("paraphrase", "paraphrase", "%"), ("neighbourhood", "neighbours", "%"),
                   ("efficacy_top1", "eff top-1", "%"), ("paraphrase_top1", "para top-1", "%"),
                   ("efficacy_before", "eff before", "%"), ("paraphrase_before", "para before", "%"),
                   ("neighbourhood_before", "neigh before", "%"), ("known_top1_before", "known top-1", "%")])
    print()
    C.table(rows, [("case", f"case (greedy, engine {args.engine})", ""), ("efficacy_greedy", "efficacy", "%"),
                   ("paraphrase_greedy", "paraphrase", "%"), ("neighbourhood_greedy", "neighbours", "%"),
                   ("subject_locality", "subject loc.", "%"), ("subject_locality_probes", "probes", "n"),
                   ("other_facts_kept", "other facts", "%"), ("realized_mean", "realised", "%"),
                   ("realized_min", "realised min", "%")])
    print()
    C.table(rows, [("case", "case (new target trained)", ""), ("trained_target_share", "share", "%"),
                   ("efficacy_trained_target", "efficacy", "%"), ("paraphrase_trained_target", "paraphrase", "%"),
                   ("neighbourhood_trained_target", "neighbours", "%"),
                   ("efficacy_greedy_trained_target", "eff. greedy", "%"),
                   ("paraphrase_greedy_trained_target", "para. greedy", "%")])
    print()
    C.table(rows, [("case", "case (s per edit)", ""), ("s_per_edit_templates", "templates", "s"),
                   ("s_per_edit_stats", "stats", "s"), ("s_per_edit_keys", "keys", "s"),
                   ("s_per_edit_targets", "v*", "s"), ("s_per_edit_solve", "solve", "s"),
                   ("s_per_edit_total", "total", "s"), ("edits_per_s", "edits/s", "s"),
                   ("stats_computed", "stats computed", "n"), ("peak_mem_mb", "peak MB", "n")])
    m = C.meta(args, C.command_line("bench.quality"), {
        "model": str(model_dir), "model_sha256": base_hash, "records": args.records, "seed": args.seed,
        "requests": rs.describe(), "cache": str(store.root),
        "note": "s_per_edit_* are compute_edit's phase times summed over the case's calls and divided by its "
                "edits; 'stats' is near zero when the statistics came from the cache (stats_computed counts the "
                "calls that computed them). peak_mem_mb: the case's peak RSS (ru_maxrss after a reset through "
                "/proc/self/clear_refs) on CPU, torch.cuda.max_memory_allocated on CUDA."})
    C.write_results(args.out, m, rows, CASES)


if __name__ == "__main__":
    main()
