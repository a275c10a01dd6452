"""Benchmark: what one batch does to the edited subjects' *other* facts, in every phrasing the model knows them in.

    python -m bench.subject_damage --model DIR [--requests FILE ...] [--hparams FILE] [--method memit]
                                   [--tokens 4] [--threads 2] [--out bench/results/subject_damage.json]

The batch is edited as the pipeline edits it (validation.gate.probes.for_editor: each request with its subject's
other facts to keep and a subject-first phrasing to train), on a sandbox model directory (its ``facts.jsonl``
gives every phrasing of every fact). Then every phrasing of every fact of an edited subject that no request
rewrites is asked greedily (``--tokens`` tokens) before and after: changed or not, and whether the phrasing is
one the editor kept (``keep_prompts``) or held out. ``--requests`` defaults to the shipped demo inbox
(``sandbox/worlds/inbox``, latest-wins), ``--hparams`` to the demo's (``sandbox/worlds/demo-memit.yaml``).
Nothing is registered and no gate runs: this is the damage the gate's subject probes are there to catch.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from . import _common as C


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a sandbox model directory (ships facts.jsonl)")
    ap.add_argument("--requests", type=Path, nargs="*", default=None, help="request files (default: the demo inbox)")
    ap.add_argument("--hparams", type=Path, default=None, help="hparams YAML (default: the demo's)")
    ap.add_argument("--method", default="memit")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=None, help="editing Store root (default FACTSMITH_HOME/cache)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/subject_damage.json"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from editing import hparams as H
    from editing import modeldir
    from editing.delta import apply, weights_sha256
    from editing.engine import compute_edit
    from editing.modeldir import model_corpus
    from editing.store import Cache
    from flows import settings
    from flows.cli.run_cmd import demo_hparams
    from sandbox import example_inbox
    from validation.gate.metrics import _greedy_many
    from validation.gate.probes import for_editor, model_facts, rewritten_facts
    from validation.intake.validate import validate_files

    files = args.requests or sorted(example_inbox().glob("*.jsonl"))
    report = validate_files(files, policy="latest-wins")
    requests = report.accepted
    hp_file = args.hparams or (None if args.requests else demo_hparams(args.method))
    hp = H.load(hp_file, args.method) if hp_file else H.default(args.method, "sandbox")
    model, tok = modeldir.load(args.model, args.device)
    pool = model_facts(args.model)
    edit_requests = for_editor(requests, pool)
    t0 = time.perf_counter()
    result = compute_edit(model, tok, edit_requests, hp, Cache(args.cache or settings.cache_dir()),
                          corpus_files=model_corpus(args.model))
    seconds = time.perf_counter() - t0
    edited = copy.deepcopy(model)
    apply(edited, result.delta)

    subjects = {r.subject for r in requests}
    rewritten = {f.id for r in requests for f in rewritten_facts(r, pool)}
    kept = {}
    for r, e in zip(requests, edit_requests):
        kept.setdefault(r.subject, set()).update(e.keep_prompts)
    asked = [(t, f) for f in pool if f.subject in subjects and f.id not in rewritten for t in f.texts]
    items = [(t, args.tokens) for t, _ in asked]
    before, after = _greedy_many(model, tok, items, {}), _greedy_many(edited, tok, items, {})
    rows = []
    for (t, f), it in zip(asked, items):
        rows.append({"subject": f.subject, "relation": f.relation, "prompt": t, "target": f.target,
                     "kept_by_editor": t.replace(f.subject, "{}", 1) in kept[f.subject],
                     "before": tok.decode(before[it][0]), "after": tok.decode(after[it][0]),
                     "changed": before[it][0] != after[it][0]})

    def count(sel) -> dict:
        sub = [x for x in rows if sel(x)]
        return {"asked": len(sub), "changed": sum(x["changed"] for x in sub)}

    by_subject = {}
    for s in sorted(subjects):
        c = count(lambda x, s=s: x["subject"] == s)
        if c["asked"]:
            by_subject[s] = c
    summary = {"requests": len(requests), "subjects": len(subjects), "edit_s": round(seconds, 1),
               "all": count(lambda x: True), "kept_by_editor": count(lambda x: x["kept_by_editor"]),
               "held_out": count(lambda x: not x["kept_by_editor"]),
               "subjects_with_a_change": sum(1 for c in by_subject.values() if c["changed"])}
    print(f"{summary['requests']} requests about {summary['subjects']} subjects, one {args.method} batch "
          f"({seconds:.0f} s): {summary['all']['changed']} of {summary['all']['asked']} answers about their other "
          f"facts changed ({summary['kept_by_editor']['changed']} of {summary['kept_by_editor']['asked']} in phrasings "
          f"the editor keeps, {summary['held_out']['changed']} of {summary['held_out']['asked']} held out); "
          f"{summary['subjects_with_a_change']} subjects changed")
    print("\n| subject | relation | kept by editor | prompt | before | after |\n|---|---|---|---|---|---|")
    for x in rows:
        if x["changed"]:
            print(f"| {x['subject']} | {x['relation']} | {'yes' if x['kept_by_editor'] else 'no'} | {x['prompt']} | "
                  f"{x['before'].strip()} | {x['after'].strip()} |")
    meta = C.meta(args, C.command_line("bench.subject_damage"),
                  {"model": str(args.model), "model_sha256": weights_sha256(model),
                   "requests_files": [str(f) for f in files], "hparams": str(hp_file) if hp_file else "preset"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import json

    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "by_subject": by_subject,
                                    "changed": [x for x in rows if x["changed"]]}, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
