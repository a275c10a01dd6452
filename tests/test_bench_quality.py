"""bench.quality's greedy probes, on the tiny sandbox: what they choose on the base model and how they score."""

from __future__ import annotations

import pytest
import torch

from editing.requests import EditRequest

pytestmark = pytest.mark.slow


def test_greedy_probes_choose_known_facts_and_see_an_edit(tiny_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench import _greedy as G

    model = AutoModelForCausalLM.from_pretrained(tiny_build.path, local_files_only=True, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_build.path, local_files_only=True)
    facts = G.model_facts(tiny_build.path)
    cap = next(f for f in facts if f.relation == "capital")
    other = next(f for f in facts if f.relation == "capital" and f.subject != cap.subject)
    req = EditRequest(cap.subject, "The capital of {} is", other.target, cap.target, id="x",
                      paraphrase_prompts=(f"{cap.subject}'s capital city is",),
                      neighborhood_prompts=((other.prompt, other.target),))
    [edited_req] = G.with_probes([req], facts)
    assert edited_req.keep_prompts and all("{}" in k for k in edited_req.keep_prompts)
    probes = G.GreedyProbes.choose(model, tok, [req], facts, other_sample=20, seed=0)
    # the subject's other facts, never the edited prompt; other subjects' facts only; all said by the base model
    assert probes.subject and all(cap.subject in p and p != req.text for p, _ in probes.subject)
    assert probes.other and all(cap.subject not in p for p, _ in probes.other) and len(probes.other) <= 20
    # a subject with no facts in the model's file is probed on the catalogue, where the base model is confident
    cat = G.catalogue_probes(model, tok, [cap.subject])
    assert cat and any(a.startswith(cap.target) for _, a in cat)
    assert all(G.greedy_says(model, tok, [p for p, _ in cat], [a for _, a in cat]))
    base = probes.score(model, tok)
    assert base["rewrite"] == [False] and all(base["subject"]) and all(base["other"]) and all(base["neighbour"])
    # a change that makes every answer start with the new target's first token: the probes see the damage. A
    # hook adds 100 to that token's logit everywhere (a rank-1 ΔW with v = ones added 100 x sum(h), whose sign is
    # the build's: on a float32 build of this world it was negative and lowered the token instead)
    bump = torch.zeros(model.get_submodule("lm_head").weight.shape[0])
    bump[tok(" " + other.target)["input_ids"][0]] = 100.0
    hook = model.get_submodule("lm_head").register_forward_hook(lambda m, args, out: out + bump)
    try:
        after = probes.score(model, tok)
    finally:
        hook.remove()
    res = G.summarize_greedy([after])
    assert res["efficacy_greedy"] == 1.0 and res["subject_locality"] < 0.5
    assert res["subject_locality_probes"] == len(probes.subject)
