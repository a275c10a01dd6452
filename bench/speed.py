"""Benchmark: where MEMIT's time goes, on the CounterFact sandbox.

    python -m bench.speed [--only targets,stats,phases] [--large] [--repeat 3] [--records 1000]
                          [--model DIR] [--hparams FILE] [--device cpu] [--threads 2] [--seed 0]
                          [--out bench/results/speed.json]

Cases (same model and requests as bench/quality.py):

* ``targets-10`` / ``targets-100`` (/ ``targets-1000`` with ``--large``): MEMIT with the batched target (v*)
  optimisation against the reference's one-request-at-a-time loop (``batched_targets: false``) on the same
  batch: seconds of the targets phase, speed-up, and the quality after each edit (efficacy, paraphrase,
  neighbourhood) and the largest difference of the final target NLLs — equal within float noise, since
  every request's loss depends on its own δ only. Statistics and context templates come from the cache
  (a one-request warm-up fills it) and are not part of the comparison.
* ``stats``: statistics throughput — tokens/s of ``compute_second_moments`` over the built-in corpus
  (MEMIT's layers, the hparams' sample count and length) against a plain ``model(input_ids,
  attention_mask)`` forward pass under ``no_grad`` over the same batches with the same padding; best of
  ``--repeat`` runs each, interleaved. Also the seconds to sample the corpus itself.
* ``phases-100``: compute_edit's phases for one MEMIT batch of 100 on a cold temporary Cache (templates,
  corpus and statistics really computed), plus its quality.

A sandbox with fewer valid records than a batch gets one shorter batch (``short_batch``). Rows of cases
not run are kept in the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time

from . import _common as C

CASES = ["targets-10", "targets-100", "targets-1000", "stats", "phases-100"]
GROUPS = {"targets": ["targets-10", "targets-100", "targets-1000"], "stats": ["stats"], "phases": ["phases-100"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="targets,stats,phases",
                    help="comma-separated: targets, stats, phases, or single cases (" + ", ".join(CASES) + ")")
    ap.add_argument("--large", action="store_true", help="also targets-1000 (the one-at-a-time loop takes long)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side of the stats comparison (best taken)")
    C.add_common_args(ap, C.RESULTS / "speed.json")
    args = ap.parse_args()
    wanted: set[str] = set()
    for w in (x for x in args.only.split(",") if x):
        if w in GROUPS:
            wanted.update(GROUPS[w])
        elif w in CASES:
            wanted.add(w)
        else:
            C.die(f"unknown case {w!r}; choose from {', '.join([*GROUPS, *CASES])}")
    if not args.large and "targets-1000" in wanted and "targets-1000" not in args.only.split(","):
        wanted.discard("targets-1000")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from editing import delta as D
    from editing.engine import compute_edit
    from editing.hparams import to_dict, with_changes
    from editing.modeldir import model_corpus
    from editing.store import Cache

    hp = C.load_hparams(args.hparams)["memit"]
    bench = C.open_bench(args)
    model_dir, model, tok, rs, store = bench.model_dir, bench.model, bench.tokenizer, bench.requests, bench.cache
    reqs = rs.requests
    base_hash = D.weights_sha256(model)

    def edit_and_score(batch, h, st):
        res = compute_edit(model, tok, batch, h, st, corpus_files=model_corpus(model_dir))
        applied = D.apply(model, res.delta)
        try:
            after = C.merge_scores(C.score(model, tok, batch))
        finally:
            applied.revert()
        return res, after

    rows = []
    # ---------------------------------------------------------------- (a) batched vs one-at-a-time v*
    for case in [c for c in CASES if c in wanted and c.startswith("targets-")]:
        size = int(case.split("-")[1])
        batch = reqs[:size]
        before = C.merge_scores(C.score(model, tok, batch))
        print(f"{case}: {len(batch)} requests", file=sys.stderr, flush=True)
        compute_edit(model, tok, batch[:1], hp, store)  # warm-up: templates, corpus and statistics cached
        out = {}
        for name, flag in (("one_at_a_time", False), ("batched", True)):
            with C.PeakMemory(args.device) as mem:
                res, after = edit_and_score(batch, with_changes(hp, batched_targets=flag), store)
                peak = mem.read()
            out[name] = (res, C.summarize(before, after), peak)
        (r1, q1, m1), (rb, qb, mb) = out["one_at_a_time"], out["batched"]
        nll_diff = max(abs(a - b) for a, b in zip(r1.details["target_nll"], rb.details["target_nll"]))
        row = {"case": case, "requests": len(batch), "short_batch": len(batch) < size,
               "targets_s_batched": rb.timings["targets"], "targets_s_one_at_a_time": r1.timings["targets"],
               "speedup": round(r1.timings["targets"] / rb.timings["targets"], 2),
               "total_s_batched": rb.timings["total"], "total_s_one_at_a_time": r1.timings["total"],
               **{f"{k}_batched": qb[k] for k in ("efficacy", "paraphrase", "neighbourhood", "efficacy_top1")},
               **{f"{k}_one_at_a_time": q1[k] for k in ("efficacy", "paraphrase", "neighbourhood", "efficacy_top1")},
               "efficacy_before": qb["efficacy_before"],
               "target_nll_max_abs_diff": round(nll_diff, 6),
               "target_steps_equal": rb.details["target_steps"] == r1.details["target_steps"],
               "peak_mem_mb_batched": mb["peak_mem_mb"], "peak_mem_mb_one_at_a_time": m1["peak_mem_mb"],
               "peak_mem_kind": mb["peak_mem_kind"], "request_ids_sha256": C.ids_digest(batch)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # ---------------------------------------------------------------- (b) statistics throughput
    if "stats" in wanted:
        rows.append(stats_case(model, tok, hp, args))
        print(json.dumps(rows[-1]), flush=True)

    # ---------------------------------------------------------------- (c) phases of one cold batch
    if "phases-100" in wanted:
        batch = reqs[:100]
        print(f"phases-100: {len(batch)} requests, cold store", file=sys.stderr, flush=True)
        before = C.merge_scores(C.score(model, tok, batch))
        with tempfile.TemporaryDirectory(prefix="bench-speed-store-") as tmp, C.PeakMemory(args.device) as mem:
            res, after = edit_and_score(batch, hp, Cache(tmp))
            peak = mem.read()
        q = C.summarize(before, after)
        row = {"case": "phases-100", "requests": len(batch), "short_batch": len(batch) < 100,
               **{f"{k}_s": res.timings[k] for k in C.PHASES},
               "edits_per_s": round(len(batch) / res.timings["total"], 3),
               **{k: q[k] for k in ("efficacy", "paraphrase", "neighbourhood", "efficacy_before")},
               **peak, "request_ids_sha256": C.ids_digest(batch)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    assert D.weights_sha256(model) == base_hash, "the model must be unchanged after every case"
    tg = [r for r in rows if r["case"].startswith("targets-")]
    if tg:
        print()
        C.table(tg, [("case", "targets (v*)", ""), ("requests", "n", "n"),
                     ("targets_s_one_at_a_time", "one-at-a-time s", "s"), ("targets_s_batched", "batched s", "s"),
                     ("speedup", "speed-up", "x"), ("efficacy_one_at_a_time", "eff 1-by-1", "%"),
                     ("efficacy_batched", "eff batched", "%"), ("paraphrase_one_at_a_time", "para 1-by-1", "%"),
                     ("paraphrase_batched", "para batched", "%"),
                     ("neighbourhood_one_at_a_time", "neigh 1-by-1", "%"),
                     ("neighbourhood_batched", "neigh batched", "%"), ("target_nll_max_abs_diff", "max |Δnll|", "")])
    st = [r for r in rows if r["case"] == "stats"]
    if st:
        print()
        C.table(st, [("case", "statistics", ""), ("tokens", "tokens", "n"),
                     ("forward_tokens_per_s", "forward tok/s", "n"), ("stats_tokens_per_s", "stats tok/s", "n"),
                     ("overhead", "stats/forward time", "x"), ("forward_s", "forward s", "s"),
                     ("stats_s", "stats s", "s"), ("corpus_sample_s", "sampling s", "s")])
    ph = [r for r in rows if r["case"] == "phases-100"]
    if ph:
        print()
        C.table(ph, [("case", "phases (cold)", ""), ("requests", "n", "n"), ("templates_s", "templates", "s"),
                     ("stats_s", "stats", "s"), ("keys_s", "keys", "s"), ("targets_s", "v*", "s"),
                     ("solve_s", "solve", "s"), ("total_s", "total", "s"), ("edits_per_s", "edits/s", "s"),
                     ("efficacy", "efficacy", "%"), ("peak_mem_mb", "peak MB", "n")])
    m = C.meta(args, C.command_line("bench.speed"), {
        "model": str(model_dir), "model_sha256": base_hash, "records": args.records, "seed": args.seed,
        "requests": rs.describe(), "cache": str(store.root), "hparams": to_dict(hp),
        "note": "times in seconds; targets-* compare only the targets phase (statistics cached by a warm-up); "
                "stats: best of --repeat interleaved runs; phases-100 runs on a cold temporary Cache"})
    C.write_results(args.out, m, rows, CASES)


def stats_case(model, tok, hp, args) -> dict:
    """Tokens/s of compute_second_moments against a plain forward pass over the same padded batches."""
    import torch

    from editing.stats import builtin_corpus, compute_second_moments

    layers = list(hp.layers)
    t0 = time.perf_counter()
    corpus = builtin_corpus(model, tok, hp.stats.mom2_samples, hp.stats.sample_tokens)
    sample_s = time.perf_counter() - t0
    device = next(model.parameters()).device
    batch_size = 64  # compute_second_moments' default, as the engine calls it
    # The same batches compute_second_moments builds: sorted by length, right padding with id 0.
    order = sorted(range(len(corpus.sequences)), key=lambda i: len(corpus.sequences[i]))
    batches = []
    for b in range(0, len(order), batch_size):
        chunk = [corpus.sequences[i] for i in order[b:b + batch_size]]
        T = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), T), dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, :len(s)] = torch.tensor(s)
            att[r, :len(s)] = 1
        batches.append((ids.to(device), att.to(device)))
    padded = sum(int(i.numel()) for i, _ in batches)
    autocast = hp.stats.mom2_dtype in ("float16", "bfloat16")  # as compute_second_moments runs them
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(hp.stats.mom2_dtype, torch.float32)

    @torch.no_grad()
    def forward() -> None:
        for ids, att in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                model(input_ids=ids, attention_mask=att)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    print(f"stats: {len(corpus.sequences)} samples, {corpus.tokens} tokens, layers {layers}, "
          f"{args.repeat} runs each", file=sys.stderr, flush=True)
    model.eval()
    fw, st = [], []
    forward()  # warm-up (allocator, kernels)
    for _ in range(args.repeat):
        fw.append(timed(forward))
        st.append(timed(lambda: compute_second_moments(model, layers, corpus, hp.stats.mom2_dtype)))
    f, s = min(fw), min(st)
    return {"case": "stats", "layers": layers, "samples": len(corpus.sequences), "tokens": corpus.tokens,
            "padded_tokens": padded, "dtype": hp.stats.mom2_dtype, "batch_size": batch_size,
            "forward_s": round(f, 4), "stats_s": round(s, 4),
            "forward_s_median": round(statistics.median(fw), 4), "stats_s_median": round(statistics.median(st), 4),
            "forward_tokens_per_s": round(corpus.tokens / f), "stats_tokens_per_s": round(corpus.tokens / s),
            "overhead": round(s / f, 3), "corpus_sample_s": round(sample_s, 2), "repeat": args.repeat}


if __name__ == "__main__":
    main()
