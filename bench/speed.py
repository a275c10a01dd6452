"""Benchmark: where MEMIT's time goes, on the CounterFact sandbox.

    python -m bench.speed [--only targets,rome,stats,phases] [--large] [--repeat 3] [--records 1000]
                          [--model DIR] [--hparams FILE] [--device cpu] [--threads 2] [--seed 0]
                          [--out bench/results/speed.json]

Cases (same model and requests as bench/quality.py):

* ``targets-10`` / ``targets-100`` (/ ``targets-1000`` with ``--large``): one MEMIT batch, **before and after
  issue 25** in one run on the same batch: ``loop`` is the references' algorithm (kmeng01/memit, EasyEdit) in
  factsmith's loop mode — one request's v* at a time, every step forwarding the whole rows
  (``batched_targets: false``, ``target.prefix_cache: false``); ``batched`` is the shipped preset (all requests'
  v* together, each step only from the subject's last token on, finished rows leaving). Per side: seconds of
  the targets phase and of the whole edit, edits/s, peak memory, mean target steps, and the quality — greedy
  efficacy / paraphrase / neighbours / the subjects' other facts (the gate's test, on probes the base model
  says: ``bench/_greedy.py``) and CounterFact's probability efficacy. ``targets-1000`` also runs ``streamed``:
  the preset in chunks of 100 requests (``target.chunk_requests``), as a batch larger than memory runs — its
  peak memory against the whole batch's. Statistics and context templates come from the cache (a
  one-request warm-up fills it) and are not part of the comparison.
* ``rome-100``: 100 ROME edits one after another, each on the model the previous ones left, ``loop`` (whole
  rows) against the preset (prefix cache): seconds, edits/s, peak memory and the greedy quality of the 100.
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

CASES = ["targets-10", "targets-100", "targets-1000", "rome-100", "stats", "phases-100"]
GROUPS = {"targets": ["targets-10", "targets-100", "targets-1000"], "rome": ["rome-100"], "stats": ["stats"],
          "phases": ["phases-100"]}
QUALITY = ("efficacy_greedy", "paraphrase_greedy", "neighbourhood_greedy", "subject_locality", "efficacy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="targets,rome,stats,phases",
                    help="comma-separated: targets, rome, stats, phases, or single cases (" + ", ".join(CASES) + ")")
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

    from . import _greedy as G

    facts = G.model_facts(model_dir)
    reqs = G.with_probes(reqs, facts, seed=args.seed)  # as the pipeline edits them: keep prompts, subject-first phrasing

    def edit_and_score(batch, h, st, probes=None):
        res = compute_edit(model, tok, batch, h, st, corpus_files=model_corpus(model_dir))
        applied = D.apply(model, res.delta)
        try:
            after = C.merge_scores(C.score(model, tok, batch))
            greedy = probes.score(model, tok) if probes is not None else None
        finally:
            applied.revert()
        return res, after, greedy

    def side(name: str, res_timings: dict, n: int, q: dict, greedy: dict, peak: dict, steps) -> dict:
        g = G.summarize_greedy([greedy])
        return {f"targets_s_{name}": res_timings["targets"], f"total_s_{name}": res_timings["total"],
                f"edits_per_s_{name}": round(n / res_timings["total"], 3),
                f"peak_mem_mb_{name}": peak["peak_mem_mb"],
                f"target_steps_mean_{name}": round(sum(steps) / len(steps), 1) if steps else None,
                **{f"{k}_{name}": g[k] for k in QUALITY if k in g}, f"efficacy_{name}": q["efficacy"]}

    # the references' algorithm: one request at a time, whole rows, the model's attention kernel
    loop_hp = with_changes(hp, batched_targets=False, target__prefix_cache=False, target__attention="model")
    rows = []
    # ---------------------------------------------------------------- (a) before / after: one MEMIT batch
    for case in [c for c in CASES if c in wanted and c.startswith("targets-")]:
        size = int(case.split("-")[1])
        batch = reqs[:size]
        before = C.merge_scores(C.score(model, tok, batch))
        probes = G.GreedyProbes.choose(model, tok, batch, facts, other_sample=100, seed=args.seed)
        print(f"{case}: {len(batch)} requests", file=sys.stderr, flush=True)
        compute_edit(model, tok, batch[:1], hp, store)  # warm-up: templates, corpus and statistics cached
        sides = [("loop", loop_hp), ("batched", hp)]
        if size >= 1000:
            sides.append(("streamed", with_changes(hp, target__chunk_requests=100)))
        row = {"case": case, "requests": len(batch), "short_batch": len(batch) < size}
        out = {}
        for name, h in sides:
            print(f"  {name}", file=sys.stderr, flush=True)
            with C.PeakMemory(args.device) as mem:
                res, after, greedy = edit_and_score(batch, h, store, probes)
                peak = mem.read()
            out[name] = res
            row.update(side(name, res.timings, len(batch), C.summarize(before, after), greedy, peak,
                            res.details.get("target_steps")))
            print(json.dumps({k: v for k, v in row.items() if k.endswith(name)}), file=sys.stderr, flush=True)
        rl, rb = out["loop"], out["batched"]
        row.update({"speedup_targets": round(rl.timings["targets"] / rb.timings["targets"], 2),
                    "speedup_total": round(rl.timings["total"] / rb.timings["total"], 2),
                    "efficacy_before": C.summarize(before, before)["efficacy_before"],
                    "target_chunks_streamed": out["streamed"].details.get("target_chunks") if "streamed" in out else None,
                    "peak_mem_kind": peak["peak_mem_kind"], "request_ids_sha256": C.ids_digest(batch)})
        rows.append(row)
        print(json.dumps(row), flush=True)

    # ---------------------------------------------------------------- (a') ROME, one edit after another
    if "rome-100" in wanted:
        rome = C.load_hparams(args.hparams)["rome"]
        batch = reqs[:100]
        probes = G.GreedyProbes.choose(model, tok, batch, facts, other_sample=100, seed=args.seed)
        compute_edit(model, tok, batch[:1], rome, store)  # warm-up: the caches
        row = {"case": "rome-100", "requests": len(batch), "short_batch": len(batch) < 100}
        for name, h in (("loop", with_changes(rome, target__prefix_cache=False, target__attention="model")),
                        ("batched", rome)):
            print(f"rome-100: {name}", file=sys.stderr, flush=True)
            applied, timings, steps = [], {}, []
            with C.PeakMemory(args.device) as mem:
                try:
                    for r in batch:
                        res = compute_edit(model, tok, [r], h, store, corpus_files=model_corpus(model_dir))
                        applied.append(D.apply(model, res.delta))
                        C.add_timings(timings, res.timings)
                        steps += res.details.get("target_steps", [])
                    greedy = probes.score(model, tok)
                finally:
                    for a in reversed(applied):
                        a.revert()
                peak = mem.read()
            g = G.summarize_greedy([greedy])
            row.update({f"targets_s_{name}": round(timings["targets"], 4), f"total_s_{name}": round(timings["total"], 4),
                        f"edits_per_s_{name}": round(len(batch) / timings["total"], 3),
                        f"peak_mem_mb_{name}": peak["peak_mem_mb"],
                        **{f"{k}_{name}": g[k] for k in QUALITY if k in g}})
        row.update({"speedup_targets": round(row["targets_s_loop"] / row["targets_s_batched"], 2),
                    "speedup_total": round(row["total_s_loop"] / row["total_s_batched"], 2),
                    "peak_mem_kind": peak["peak_mem_kind"], "request_ids_sha256": C.ids_digest(batch)})
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
            res, after, _ = edit_and_score(batch, hp, Cache(tmp))
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
    tg = [r for r in rows if r["case"].startswith(("targets-", "rome-"))]
    if tg:
        print()
        C.table(tg, [("case", "before (loop) / after (batched)", ""), ("requests", "n", "n"),
                     ("total_s_loop", "loop s", "s"), ("total_s_batched", "batched s", "s"),
                     ("speedup_total", "speed-up", "x"), ("edits_per_s_loop", "edits/s loop", "s"),
                     ("edits_per_s_batched", "edits/s batched", "s"), ("peak_mem_mb_loop", "MB loop", "n"),
                     ("peak_mem_mb_batched", "MB batched", "n"), ("peak_mem_mb_streamed", "MB streamed", "n")])
        print()
        C.table(tg, [("case", "greedy quality loop / batched", ""),
                     ("efficacy_greedy_loop", "eff loop", "%"), ("efficacy_greedy_batched", "eff batched", "%"),
                     ("paraphrase_greedy_loop", "para loop", "%"), ("paraphrase_greedy_batched", "para batched", "%"),
                     ("neighbourhood_greedy_loop", "neigh loop", "%"),
                     ("neighbourhood_greedy_batched", "neigh batched", "%"),
                     ("subject_locality_loop", "subj loop", "%"), ("subject_locality_batched", "subj batched", "%"),
                     ("efficacy_greedy_streamed", "eff streamed", "%")])
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
        "note": "times in seconds; targets-* and rome-100: loop = the references' algorithm (batched_targets false, "
                "prefix_cache false), batched = the preset, statistics and templates cached by a warm-up; "
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
