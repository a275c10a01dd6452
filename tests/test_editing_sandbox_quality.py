"""Edit quality on trained sandboxes: 20 sequential ROME edits and a MEMIT batch of 50.

Each edit moves a subject's capital to another subject's capital (a name the model knows). Measured as
CounterFact does (p_new > p_true by mean per-token NLL) on the main phrasing (efficacy) and on the other
phrasings (paraphrase), and greedily (the model's answer is now target_new). "Other facts" are the facts
of subjects that were not edited, main phrasing, among those the model answered correctly before: the share
still answered correctly after. The edited subject's *other* attributes are not asserted: the sandbox
stores a subject's attributes in one key, and a rank-one edit of that key moves them together
(README, "The sandbox model").
"""

from __future__ import annotations

import pytest

from editing import hparams as H
from editing.delta import apply, weights_sha256
from editing.engine import compute_edit
from editing.requests import EditRequest
from editing.score import score_targets
from editing.store import Cache

pytestmark = pytest.mark.slow


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


def _capital_requests(facts, n: int) -> list[EditRequest]:
    """Edit the capital of the first ``n`` subjects to the next subject's capital (a rotation)."""
    caps = [f for f in facts if f.relation == "capital"][:n]
    assert len(caps) == n, f"the world has {len(caps)} capitals, need {n}"
    return [
        EditRequest(f.subject, f.prompts[0], caps[(i + 1) % n].target, f.target, id=f"cap-{i}",
                    paraphrase_prompts=tuple(f.render(p) for p in range(1, len(f.prompts))))
        for i, f in enumerate(caps)
    ]


def _quality(model, tok, requests, others_before, others):
    """CounterFact-style efficacy and paraphrase, top-1 efficacy, and the share of other facts kept."""
    prompts = [r.text for r in requests]
    new = score_targets(model, tok, prompts, [r.target_new for r in requests])
    true = score_targets(model, tok, prompts, [r.target_true for r in requests])
    para = [(p, r) for r in requests for p in r.paraphrase_prompts]
    pn = score_targets(model, tok, [p for p, _ in para], [r.target_new for _, r in para])
    pt = score_targets(model, tok, [p for p, _ in para], [r.target_true for _, r in para])
    kept = score_targets(model, tok, [f.render(0) for f in others], [f.target for f in others])
    known = [i for i, s in enumerate(others_before) if s.argmax]
    return {
        "efficacy": sum(a.mean_nll < b.mean_nll for a, b in zip(new, true)) / len(requests),
        "efficacy_top1": sum(a.argmax for a in new) / len(requests),
        "paraphrase": sum(a.mean_nll < b.mean_nll for a, b in zip(pn, pt)) / len(para),
        "others_known": len(known),
        "others_kept": sum(kept[i].argmax for i in known) / len(known),
    }


def _run(build, method: str, n: int, store_dir, corpus_files=None):
    from sandbox.trainer import model_facts

    model, tok = _load(build.path)
    facts = model_facts(build.path)
    requests = _capital_requests(facts, n)
    edited = {r.subject for r in requests}
    others = [f for f in facts if f.subject not in edited]
    others_before = score_targets(model, tok, [f.render(0) for f in others], [f.target for f in others])
    hp = H.default(method, "sandbox")
    h0 = weights_sha256(model)
    result = compute_edit(model, tok, requests, hp, Cache(store_dir), corpus_files=corpus_files)
    assert weights_sha256(model) == h0  # computing never changes the model
    applied = apply(model, result.delta)
    try:
        q = _quality(model, tok, requests, others_before, others)
    finally:
        applied.revert()
    assert weights_sha256(model) == h0
    print(f"\n{method} x{n}: {q}")
    return q


def test_rome_20_sequential_edits_on_the_tiny_sandbox(tiny_build, tmp_path):
    q = _run(tiny_build, "rome", 20, tmp_path / "store")
    assert q["others_known"] >= 20
    assert q["efficacy"] >= 0.95, q
    assert q["efficacy_top1"] >= 0.9, q
    assert q["paraphrase"] >= 0.8, q
    assert q["others_kept"] >= 0.95, q



def test_memit_batch_of_50_on_a_synthetic_sandbox(synthetic_build, tmp_path):
    from editing.modeldir import STATS_CORPUS

    # statistics on the sandbox's training text, as MEMIT's on GPT-2's (text the model samples itself
    # invents new made-up names here; README, "The editing engine")
    q = _run(synthetic_build, "memit", 50, tmp_path / "store", corpus_files=[synthetic_build.path / STATS_CORPUS])
    assert q["others_known"] >= 20
    assert q["efficacy"] >= 0.95, q
    assert q["efficacy_top1"] >= 0.9, q
    assert q["paraphrase"] >= 0.8, q
    assert q["others_kept"] >= 0.95, q
