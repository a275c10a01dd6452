"""Where does a sandbox model keep its facts? Subject-swap activation patching, per layer.

    python -m bench.sandbox_locate --model DIR [--pairs 200] [--out bench/results/sandbox_locate.json]

For pairs of subjects (A, B) of one relation with different objects, run B's prompt and replace one
activation at one position with its value from A's run (same phrasing). If the prediction switches to A's
object, that activation carries the fact. Sites: the MLP output and the whole residual stream (block
output), at B's subject-last token and at the prompt's last token, for every layer. ROME/MEMIT need the
facts in the MLP output at the subject's last token. (A first look, simpler than causal tracing: editing.locate.)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def subject_last(tok, text: str, subject: str) -> int:
    enc = tok(text, return_offsets_mapping=True)
    start = text.index(subject)
    end = start + len(subject)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    return hits[-1]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from editing import modeldir

    model, tok = modeldir.load(args.model)
    facts = [json.loads(x) for x in (args.model / modeldir.FACTS_FILE).read_text(encoding="utf-8").split("\n") if x.strip()]
    facts = [f for f in facts if f["subject"] is not None]
    by_rel: dict[str, list[dict]] = {}
    for f in facts:
        by_rel.setdefault(f["relation"], []).append(f)
    rng = random.Random(args.seed)
    pairs = []
    while len(pairs) < args.pairs:
        rel = rng.choice(sorted(by_rel))
        a, b = rng.sample(by_rel[rel], 2)
        ta, tb = tok(" " + a["target"]).input_ids[0], tok(" " + b["target"]).input_ids[0]
        if ta != tb:
            pairs.append((a, b, ta, tb))

    L = model.config.n_layer
    sites = [(kind, where, layer) for kind in ("mlp", "block") for where in ("subject_last", "last") for layer in range(L)]
    switched = {s: 0 for s in sites}
    baseline_ok = 0
    t0 = time.perf_counter()
    for a, b, ta, tb in pairs:
        pa = a["prompts"][0].replace("{}", a["subject"])
        pb = b["prompts"][0].replace("{}", b["subject"])
        ia, ib = tok(pa, return_tensors="pt").input_ids, tok(pb, return_tensors="pt").input_ids
        pos_a = {"subject_last": subject_last(tok, pa, a["subject"]), "last": ia.shape[1] - 1}
        pos_b = {"subject_last": subject_last(tok, pb, b["subject"]), "last": ib.shape[1] - 1}
        baseline_ok += int(model(ib).logits[0, -1].argmax() == tb)
        cache: dict[tuple[str, int], torch.Tensor] = {}
        handles = []
        for layer in range(L):
            for kind, mod in (("mlp", model.transformer.h[layer].mlp), ("block", model.transformer.h[layer])):
                def rec(m, i, o, key=(kind, layer)):
                    cache[key] = (o[0] if isinstance(o, tuple) else o).detach().clone()
                handles.append(mod.register_forward_hook(rec))
        model(ia)
        for h in handles:
            h.remove()
        for kind, where, layer in sites:
            mod = model.transformer.h[layer].mlp if kind == "mlp" else model.transformer.h[layer]
            src = cache[(kind, layer)][0, pos_a[where]]

            def patch(m, i, o, src=src, pos=pos_b[where]):
                t = o[0] if isinstance(o, tuple) else o
                t = t.clone()
                t[0, pos] = src
                return (t, *o[1:]) if isinstance(o, tuple) else t

            h = mod.register_forward_hook(patch)
            try:
                switched[(kind, where, layer)] += int(model(ib).logits[0, -1].argmax() == ta)
            finally:
                h.remove()
    n = len(pairs)
    rows = [{"site": kind, "position": where, "layer": layer, "switch_rate": round(switched[(kind, where, layer)] / n, 3)}
            for kind, where, layer in sites]
    print(f"model {args.model}: {n} subject pairs, B answered right unpatched {baseline_ok / n:.1%}, {time.perf_counter() - t0:.1f} s")
    print(f"{'site':<7}{'position':<14}" + "".join(f"{'layer ' + str(i):>9}" for i in range(L)))
    for kind in ("mlp", "block"):
        for where in ("subject_last", "last"):
            vals = "".join(f"{switched[(kind, where, i)] / n:>9.1%}" for i in range(L))
            print(f"{kind:<7}{where:<14}{vals}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(args.model), "pairs": n, "baseline": baseline_ok / n, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
