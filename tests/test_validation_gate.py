"""The release gate: policy loading, greedy probes, bisection, and a real gate on the tiny sandbox that passes
a good edit and fails a destructive one (proof that it can fail)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from validation.gate.measures import greedy, ngram_entropy
from validation.gate.policy import GatePolicy, PolicyError, load_policy
from validation.requests import Request

from .tiny_models import tiny_model, tiny_tokenizer


# --------------------------------------------------------------------------------------------------
# Policy, probes, pure parts


@pytest.mark.unit
def test_policy_yaml_is_strict(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("min_reliability: 0.8\nneighbours: 3\n")
    pol = load_policy(p)
    assert (pol.min_reliability, pol.neighbours, pol.min_locality) == (0.8, 3, GatePolicy().min_locality)
    p.write_text("min_reliabilty: 0.8\n")
    with pytest.raises(PolicyError, match="'min_reliabilty'"):
        load_policy(p)
    p.write_text("max_kl: lots\n")
    with pytest.raises(PolicyError, match="'max_kl'"):
        load_policy(p)
    p.write_text("min_locality: 1.5\n")
    with pytest.raises(PolicyError, match="min_locality"):
        load_policy(p)


@pytest.mark.unit
def test_batched_greedy_with_left_padding_equals_one_prompt_at_a_time():
    tok = tiny_tokenizer(300)
    model = tiny_model("gpt2", vocab=300, d_model=48, d_mlp=96, init_range=0.2)
    prompts = ["The capital of France is", "Rome", "The head of state of Poland is Andrzej"]
    ids = [tok(p)["input_ids"] for p in prompts]
    batched, first = greedy(model, tok, ids, [5, 3, 4])
    for i, p in enumerate(ids):
        alone, lp = greedy(model, tok, [p], [[5, 3, 4][i]])
        assert batched[i] == alone[0]
        assert torch.allclose(first[i], lp[0], atol=1e-4)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([p])).logits[0, -1].argmax().item()
        assert batched[i][0] == ref


@pytest.mark.unit
@pytest.mark.parametrize("family", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_greedy_on_the_key_value_cache_says_what_the_whole_rows_say(family):
    """Each step on the cache (the new token only, the last position's logits only) gives the tokens and the
    first log-probabilities of running the whole left-padded rows again; a batch that would outgrow the
    model's 64 positions runs on its window as before."""
    tok = tiny_tokenizer(300)
    model = tiny_model(family, vocab=300, d_model=48, d_mlp=96, init_range=0.2)  # sharp: no near-ties
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (3, 17, 8, 8, 1, 25, 12)]
    n_tokens = [12, 5, 12, 1, 12, 9, 12]
    whole = greedy(model, tok, prompts, n_tokens, batch_size=3, kv_cache=False)
    cached = greedy(model, tok, prompts, n_tokens, batch_size=3)
    assert cached[0] == whole[0] and [len(o) for o in cached[0]] == n_tokens
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached[1], whole[1]))
    long = [torch.randint(1, 300, (58,), generator=g).tolist()]
    assert greedy(model, tok, long, [12])[0] == greedy(model, tok, long, [12], kv_cache=False)[0]


@pytest.mark.unit
def test_ngram_entropy_drops_for_repetitive_text():
    varied = "the cat sat on the mat while a dog ran past the old red barn"
    stuck = "the the the the the the the the the the the the the the"
    assert ngram_entropy(varied) > 2.0 > ngram_entropy(stuck) == 0.0


@pytest.mark.unit
def test_perplexity_sample_leaves_out_sentences_about_edited_subjects():
    from validation.gate.measures import without_subjects

    text = ("Iceland's head of government is Katrín Jakobsdóttir. The capital of Chile is Santiago.\n\n"
            "In Iceland, people pay with the króna. The Icelandic sagas are old. Peru's capital is Lima.")
    assert without_subjects(text, {"Iceland", "Peru"}) == "The capital of Chile is Santiago.\n\nThe Icelandic sagas are old."
    assert without_subjects(text, set()) == text
    assert without_subjects("Peru is large.", {"Peru"}) == ""


@pytest.mark.unit
def test_norm_growth_blames_the_requests_whose_parts_grew_the_matrix():
    from editing.delta import Delta, LayerDelta
    from validation.gate.blame import norm_blame

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False))
    w = float(base[0].weight.detach().norm())
    U, V = torch.randn(32, 4), torch.randn(16, 4)
    U, V = U / U.norm(dim=0), V / V.norm(dim=0)
    scale = torch.tensor([0.1, 3.0, 0.2, 2.0]) * w  # requests b and d carry big parts
    delta = Delta({"0": LayerDelta(U * scale, V)})
    assert norm_blame(base, delta, ["a", "b", "c", "d"], threshold=10.0) == []
    blamed = norm_blame(base, delta, ["a", "b", "c", "d"], threshold=1.5)
    assert blamed == ["b", "d"]
    dw = (U * scale)[:, [0, 2]] @ V[:, [0, 2]].T  # what is left is within the threshold
    assert float((base[0].weight.detach() + dw).norm()) / w <= 1.5
    assert norm_blame(base, delta, ["a", "b"], threshold=1.5) == []  # factors not one per request: no blame


@pytest.mark.unit
def test_entropy_drop_blames_the_subjects_whose_generations_lost_it():
    from validation.gate.blame import entropy_blame, failed_thresholds

    # (subject, entropy before, after) per generation prompt: Chile's edit made its generations repeat
    ent = [("France", 4.0, 3.9), ("France", 4.0, 4.0), ("Chile", 4.0, 1.0), ("Chile", 4.0, 0.5),
           ("Peru", 4.0, 3.2), ("Peru", 4.0, 3.6)]
    assert entropy_blame(ent, 0.1) == ["Chile"]  # drop 0.325; without Chile (16 - 14.7) / 16 = 0.081
    assert entropy_blame(ent, 0.05) == ["Chile", "Peru"]
    assert entropy_blame(ent, 0.5) == []  # the whole drop (0.325) is within the threshold
    rows = [{"id": "r-fr", "subject": "France", "reliable": True, "generalization": 1.0},
            {"id": "r-cl", "subject": "Chile", "reliable": True, "generalization": 1.0}]
    m = {"reliability": 1.0, "generalization": 1.0, "locality": 1.0, "protected": None, "kl": 0.0,
         "entropy_drop": 0.325, "entropy_blame": ["Chile"], "perplexity_ratio": 1.0, "norm_growth": {},
         "max_norm_growth": 1.0}
    (fail,) = failed_thresholds(GatePolicy(), m, rows, [])
    assert fail["metric"] == "entropy_drop" and fail["requests"] == ["r-cl"] and fail["subjects"] == ["Chile"]


@pytest.mark.unit
def test_namesakes_are_the_subjects_sharing_a_name_word_last_word_first_none_edited():
    from validation.gate.probes import Fact, name_words, namesakes

    assert name_words("the United Kingdom") == ["united", "kingdom"]
    assert name_words("Côte d'Ivoire") == ["côte", "d'ivoire"]
    pool = [Fact("1", "North Korea", "capital", "The capital of North Korea is", "Pyongyang"),
            Fact("2", "North Korea", "currency", "The currency of North Korea is the", "won"),
            Fact("3", "South Africa", "capital", "The capital of South Africa is", "Pretoria"),
            Fact("4", "Korea Strait", None, "Korea Strait lies in", "Asia"),
            Fact("5", "Chile", "capital", "The capital of Chile is", "Santiago"),
            Fact("6", "the United States", "capital", "The capital of the United States is", "Washington"),
            Fact("7", "South Korea", "currency", "The currency of South Korea is the", "won")]
    r = Request(id="a", subject="South Korea", prompt="The capital of {} is", target_new="Busan")
    got = [f.id for f in namesakes(r, pool, {"South Korea"}, 10)]
    # the last word shared ("Korea", where the model reads the subject) first; then one other word shared
    assert sorted(got[:2]) == ["1", "2"] and sorted(got[2:]) == ["3", "4"]
    assert [f.id for f in namesakes(r, pool, {"South Korea", "North Korea"}, 10)] == got[2:]  # none edited
    assert len(namesakes(r, pool, set(), 1)) == 1
    us = Request(id="b", subject="the United Kingdom", prompt="The capital of {} is", target_new="Paris")
    assert [f.id for f in namesakes(us, pool, set(), 5)] == ["6"]  # "the" is not a name word; "united" is


@pytest.mark.unit
def test_paraphrases_come_from_the_catalogue_when_a_request_has_none():
    from validation.gate.probes import neighbour_candidates, paraphrases, Fact

    r = Request(id="a", subject="Chile", prompt="The capital of {} is", target_new="Lima", relation=None)
    got = paraphrases(r, 2)
    assert len(got) == 2 and all("Chile" in p and p != r.text for p in got)  # found by the template
    r2 = Request(id="b", subject="Ellie Kemper", prompt="{} is a citizen of", target_new="Canada", relation="P27")
    assert paraphrases(r2, 5) and all("Ellie Kemper" in p for p in paraphrases(r2, 5))
    own = Request(id="c", subject="X", prompt="{} is", target_new="Y", paraphrase_prompts=("X really is",))
    assert paraphrases(own, 3) == ("X really is",)
    pool = [Fact("1", "Peru", "capital", "The capital of Peru is", "Lima"),
            Fact("2", "Chile", "capital", "The capital of Chile is", "Santiago"),
            Fact("3", "Peru", "currency", "The currency of Peru is the", "sol")]
    r3 = Request(id="d", subject="Bolivia", prompt="The capital of {} is", target_new="Lima", relation="capital")
    assert [f.id for f in neighbour_candidates(r3, pool, {"Chile", "Bolivia"}, 5)] == ["1"]


@pytest.mark.unit
def test_a_relation_the_catalogue_lacks_is_probed_and_kept_in_the_models_own_phrasings(tmp_path):
    """An outside check on a world of companies: the gate had no paraphrase for "founding_product" (not in the
    catalogue) and asked the subject's other facts in their main phrasing only, the one the editor keeps; it
    passed edits that still said the old product on "What launched X was" and moved the headquarters on "The
    city that hosts the headquarters of X is"."""
    from validation.gate.probes import (Fact, keep_templates, model_facts, paraphrases, rewrite_templates,
                                        subject_probes)

    def fact(i, subject, rel, target, *templates):
        texts = [t.replace("{}", subject) for t in templates]
        return Fact(str(i), subject, rel, texts[0], target, tuple(texts[1:]))

    product = ("The first product of {} was", "{} started out by selling", "What launched {} was")
    hq = ("The headquarters of {} are in", "{} is headquartered in", "The city that hosts the headquarters of {} is")
    ceo = ("The chief executive of {} is", "{}'s chief executive is", "The company {} is run by")
    pool = [fact(1, "Hembrix Paper", "founding_product", "a chess clock", *product),
            fact(2, "Hembrix Paper", "headquarters", "Mendel City", *hq),
            fact(3, "Hembrix Paper", "chief_executive", "Ona Vell", *ceo),
            fact(4, "Ispera Bank", "founding_product", "a paper kite", *product)]
    r = Request(id="013", subject="Hembrix Paper", prompt=product[0], target_new="a coffee grinder",
                relation="founding_product")
    # the editor trains the model's own subject-first phrasing; the gate probes the others, never that one
    assert rewrite_templates(r, pool=pool) == ("{} started out by selling",)
    assert paraphrases(r, 3, pool=pool) == ("What launched Hembrix Paper was",)
    assert paraphrases(r, 3) == ()  # what the gate had before: nothing to measure generalisation on
    # the same request without a relation: its fact found by its prompt
    bare = Request(id="b", subject="Hembrix Paper", prompt=product[0], target_new="a coffee grinder")
    assert paraphrases(bare, 3, pool=pool) == ("What launched Hembrix Paper was",)
    # the subject's other facts in every phrasing, every fact once before any twice, never the rewritten one
    probes = subject_probes([r], pool, 0)["Hembrix Paper"]
    assert sorted(p for p, _, _ in probes) == sorted(pool[1].texts + pool[2].texts)
    assert {f for _, _, f in probes[:2]} == {"2", "3"} and {f for _, _, f in probes[2:4]} == {"2", "3"}
    assert {p for p, _, _ in subject_probes([r], pool, 4)["Hembrix Paper"]} <= set(pool[1].texts + pool[2].texts)
    assert [t for p, t, _ in probes if "headquarters" in p or "headquartered" in p] == ["Mendel City"] * 3
    # the editor keeps those relations in the model's phrasings, never the rewritten fact's
    for req in (r, bare):
        keep = keep_templates([req], pool)["Hembrix Paper"]
        assert "{} is headquartered in" in keep and "The company {} is run by" in keep
        assert not any(t in keep for t in product)
    # model_facts reads the phrasings a sandbox ships
    from editing.modeldir import FACTS_FILE

    (tmp_path / FACTS_FILE).write_text(json.dumps({"subject": "Hembrix Paper", "relation": "founding_product",
                                                   "target": "a chess clock", "prompts": list(product)}) + "\n")
    (f,) = model_facts(tmp_path)
    assert f.texts == pool[0].texts and f.target == "a chess clock"


@pytest.mark.unit
def test_each_request_must_meet_the_thresholds_on_its_own_probes():
    from validation.gate.blame import failed_thresholds

    # 10 requests: the batch's shares pass (0.9 said, 0.9 of subjects' facts kept), one request's do not
    rows = [{"id": f"r{i}", "subject": f"S{i}", "reliable": i != 3, "generalization": 1.0,
             "subject_locality": 0.0 if i == 7 else 1.0} for i in range(10)]
    m = {"reliability": 0.9, "generalization": 1.0, "subject_locality": 0.9, "locality": 1.0, "protected": None,
         "kl": 0.0, "entropy_drop": 0.0, "entropy_blame": [], "perplexity_ratio": 1.0, "norm_growth": {},
         "max_norm_growth": 1.0}
    policy = GatePolicy(min_reliability=0.9, min_subject_locality=0.9)
    fails = {f["metric"]: f for f in failed_thresholds(policy, m, rows, [])}
    assert set(fails) == {"reliability", "subject_locality"}
    assert fails["reliability"]["requests"] == ["r3"] and fails["reliability"]["scope"] == "request"
    assert fails["subject_locality"]["requests"] == ["r7"] and fails["subject_locality"]["values"] == {"r7": 0.0}
    assert failed_thresholds(dataclasses.replace(policy, per_request=False), m, rows, []) == []
    # a batch share that fails names its requests once, as before
    m2 = dict(m, reliability=0.5)
    assert [f["metric"] for f in failed_thresholds(policy, m2, rows, [])] == ["reliability", "subject_locality"]


@pytest.mark.unit
def test_says_compares_whitespace_normalised_whole_words():
    from validation.gate.answers import says

    assert says(" Friedrich  Merz. The", "Friedrich Merz")
    assert says("\nParis, France", " Paris ")
    assert not says(" Parisian food", "Paris")  # a longer word is another answer
    assert not says(" the capital is Paris", "Paris")  # it must begin with the target
    assert not says(" Paris", "") and not says("", "Paris")
    assert says(" Gabriel Attal", "Gabriel Attal")


@pytest.mark.unit
def test_mentions_finds_a_target_as_whole_words_anywhere():
    from validation.gate.answers import mentions

    assert mentions(" the State of  Mexico.", "Mexico") and mentions("Mexico City", " Mexico")
    assert mentions("in New York, USA", "New York")
    assert not mentions(" Mexican food", "Mexico") and not mentions("a Mexicoan", "Mexico")
    assert mentions("Mexicans of Mexico", "Mexico")  # a later whole-word hit counts
    assert not mentions(" Paris", "") and not mentions("", "Paris")


@pytest.mark.unit
def test_answer_text_stops_at_the_end_of_text_token():
    from validation.gate.measures import answer_text

    tok = tiny_tokenizer(300)
    ids = tok(" Merz")["input_ids"]
    eos = tok.eos_token_id
    assert eos is not None
    assert answer_text(tok, ids + [eos] + tok(" The")["input_ids"]) == tok.decode(ids)


@pytest.mark.unit
def test_subject_probes_keep_templates_and_the_trained_phrasing_stay_apart():
    from validation.gate.probes import (Fact, catalogue, keep_templates, paraphrases, probe_bank, rewrite_templates,
                                   subject_probes)

    pool = [Fact("1", "Peru", "capital", "The capital of Peru is", "Lima"),
            Fact("2", "Peru", "currency", "The currency of Peru is the", "sol"),
            Fact("3", "Peru", "head_of_state", "The head of state of Peru is", "Dina Boluarte"),
            Fact("4", "Chile", "capital", "The capital of Chile is", "Santiago")]
    r = Request(id="a", subject="Peru", prompt="The head of state of {} is", target_new="José Jerí",
                relation="head_of_state")
    # the subject's other facts: never the relation being rewritten, never another subject
    probes = subject_probes([r], pool, 8)["Peru"]
    assert sorted(p for p, _, _ in probes) == ["The capital of Peru is", "The currency of Peru is the"]
    # what the editor keeps: phrasings of those relations, subject-first and after words, never the rewritten one
    keep = keep_templates([r], pool)["Peru"]
    assert "{}'s capital city is" in keep and "The capital city of {} is" in keep and "The capital of {} is" in keep
    assert not any("head of state" in t for t in keep)
    held_out = keep_templates([r], pool, include_first=False)["Peru"]
    assert "The capital of {} is" not in held_out and "{}'s capital city is" in held_out
    # the editor trains one subject-first phrasing; the gate's paraphrases never include it
    (trained,) = rewrite_templates(r)
    assert trained.startswith("{}") and trained in catalogue()["head_of_state"]
    para = paraphrases(r, 5)
    assert para and trained.replace("{}", "Peru") not in para and r.text not in para
    assert rewrite_templates(Request(id="b", subject="Peru", prompt="{} has its capital in", target_new="Cusco",
                                     relation="capital")) == ()  # the prompt already starts with the subject
    # an unknown subject: the catalogue's relations (its answer the base model's), minus the rewritten one
    far = subject_probes([Request(id="c", subject="Atlantis", prompt="The capital of {} is", target_new="X",
                                  relation="capital")], pool, 0)["Atlantis"]
    assert far and all(t is None and "Atlantis" in p and "capital" not in p for p, t, _ in far)
    # the probe bank: every fact and catalogue prompt about the ledger's subjects, none about the batch's
    bank = probe_bank(pool, ["Bolivia"], {"Peru"})
    assert not any("Peru" in p for p, _, _ in bank)
    assert "The capital of Chile is" in {p for p, _, _ in bank} and any("Bolivia" in p for p, _, _ in bank)
    assert bank == probe_bank(pool, ["Bolivia"], {"Peru"})  # seeded: a gate re-run probes the same sample


@pytest.mark.unit
def test_locality_blame_names_neighbours_and_leaks_only():
    from validation.gate.blame import locality_blame

    reqs = [Request(id="a", subject="Peru", prompt="{} is", target_new="Lima"),
            Request(id="b", subject="Chile", prompt="{} is", target_new="Quito")]
    rows = [{"kind": "neighbour", "request": "a", "unchanged": False, "before": " Bogotá", "after": " Lima"},
            {"kind": "broad", "request": None, "unchanged": False, "before": " Caracas", "after": " Quito."},
            {"kind": "broad", "request": None, "unchanged": False, "before": " Paris", "after": " Rome"},
            {"kind": "subject", "request": "b", "unchanged": False, "before": " x", "after": " y"}]
    assert locality_blame(rows, reqs) == ["a", "b"]  # the Paris -> Rome change points at nobody: bisection


# --------------------------------------------------------------------------------------------------
# Bisection (the gate replaced by a rule, so the search itself is what is tested)


class _Rule:
    """A fake gate: fails when a 'bad' request is in the batch, or both halves of an incompatible pair."""

    def __init__(self, bad: set[str], incompatible: tuple[str, str] | None = None):
        self.bad, self.incompatible, self.calls = bad, incompatible, 0

    def __call__(self, sub):
        from validation.gate.metrics import GateReport

        self.calls += 1
        ids = {r.id for r in sub}
        failures = []
        if ids & self.bad:
            failures.append({"metric": "locality", "value": 0.5, "threshold": 0.9, "requests": sorted(ids & self.bad)})
        if self.incompatible and set(self.incompatible) <= ids:
            failures.append({"metric": "kl", "value": 2.0, "threshold": 0.5, "requests": []})
        return GateReport(not failures, {}, {}, failures, [{"id": i} for i in sorted(ids)], [], 0.0)


def _reqs(n):
    return [Request(id=f"r{i}", subject=f"S{i}", prompt="{} is", target_new="T") for i in range(n)]


@pytest.mark.unit
def test_bisect_finds_the_largest_passing_subset_and_names_the_breakers():
    from validation.gate.bisect import bisect

    reqs = _reqs(64)
    rule = _Rule({"r3", "r41"})
    res = bisect(reqs, rule)
    assert [r.id for r in res.passed] == [r.id for r in reqs if r.id not in {"r3", "r41"}]
    assert set(res.rejected) == {"r3", "r41"} and "locality 0.500" in res.rejected["r3"]
    assert res.report is not None and res.report.passed
    assert res.runs == rule.calls < 64  # O(k log n) gate runs, not one per request
    assert bisect(reqs[:4], _Rule(set())).runs == 1


@pytest.mark.unit
def test_bisect_rejects_one_of_two_requests_that_fail_only_together():
    from validation.gate.bisect import bisect

    res = bisect(_reqs(6), _Rule(set(), incompatible=("r1", "r4")))
    assert len(res.passed) == 5 and len(res.rejected) == 1
    [(rid, why)] = res.rejected.items()
    assert rid in {"r1", "r4"} and "together" in why and res.report.passed


@pytest.mark.unit
def test_pruning_says_which_requests_were_left_out_only_for_the_batchs_norm_budget(monkeypatch, tmp_path):
    """flows.attempt.edit_gate_bisect with the edit and gate replaced by a rule: the whole batch grows a matrix
    past the limit (blaming r2, r3) and r1 fails its own generalization; r0 alone passes. r1 is rejected for what
    it did; r2 and r3 for the budget alone, and their reasons say so (they were applied by the next run when
    dropped again, on a world never tuned on: flows.attempt.BUDGET_METRICS). All three were named in company,
    so all three are worth another try without the others."""
    from flows import attempt
    from validation.gate.metrics import GateReport

    def fake(ws, sub, cache_dir):
        ids = {r.id for r in sub}
        failures = []
        if len(ids) > 1:
            failures.append({"metric": "max_norm_growth", "value": 7.0, "threshold": 3.0,
                             "requests": sorted(ids & {"r2", "r3"})})
        if "r1" in ids:
            failures.append({"metric": "generalization", "value": 0.667, "threshold": 0.8, "requests": ["r1"],
                             "scope": "request", "values": {"r1": 0.667}})
        report = GateReport(not failures, {}, {}, failures, [{"id": i} for i in sorted(ids)], [], 0.0)
        return attempt.Attempt(sub, None, None, report, {"edit": 0.0, "gate": 0.0})

    monkeypatch.setattr(attempt, "edit_and_gate", fake)
    sel = attempt.edit_gate_bisect(None, _reqs(4), tmp_path)
    assert [r.id for r in sel.attempt.requests] == ["r0"] and sorted(sel.rejected) == ["r1", "r2", "r3"]
    assert "generalization (its own) 0.667" in sel.rejected["r1"] and "submit it again" not in sel.rejected["r1"]
    # each named in company, edited again without the others on the version the pipeline registers
    # (RunOptions.follow_ups); r1 too: its generalization may hold edited alone
    assert sel.deferred == {"r1", "r2", "r3"}
    for rid in ("r2", "r3"):
        assert "max_norm_growth 7.000 against 3.000" in sel.rejected[rid]
        assert "no probe of its own failed: submit it again" in sel.rejected[rid]


@pytest.mark.unit
def test_a_request_named_in_company_is_tried_again_without_the_others_and_rejected_for_good_only_alone(
        monkeypatch, tmp_path):
    """The rule: r1's subject moves when it is edited with anyone else, r3's always. In the batch both are named
    and deferred; the follow-up's batch of the two fails both again (in company), bisection edits each alone:
    r1 passes, r3 fails alone and is rejected for good (not deferred again), with the thresholds it failed."""
    from flows import attempt
    from validation.gate.metrics import GateReport

    def fake(ws, sub, cache_dir):
        ids = {r.id for r in sub}
        bad = sorted((ids & {"r3"}) | (ids & {"r1"} if len(ids) > 1 else set()))
        failures = [{"metric": "subject_facts", "value": 0.96, "threshold": 1.0, "requests": bad, "scope": "request",
                     "values": {i: 0.96 for i in bad}}] if bad else []
        report = GateReport(not failures, {}, {}, failures, [{"id": i} for i in sorted(ids)], [], 0.0)
        return attempt.Attempt(sub, None, None, report, {"edit": 0.0, "gate": 0.0})

    monkeypatch.setattr(attempt, "edit_and_gate", fake)
    first = attempt.edit_gate_bisect(None, _reqs(4), tmp_path)
    assert [r.id for r in first.attempt.requests] == ["r0", "r2"] and first.deferred == {"r1", "r3"}
    assert "subject_facts (its own) 0.960 against 1.000" in first.rejected["r1"]
    again = attempt.edit_gate_bisect(None, [r for r in _reqs(4) if r.id in first.deferred], tmp_path)
    assert [r.id for r in again.attempt.requests] == ["r1"] and again.deferred == set()
    assert list(again.rejected) == ["r3"] and "subject_facts 0.960 against 1.000" in again.rejected["r3"]


# --------------------------------------------------------------------------------------------------
# A real gate on the tiny sandbox


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


def _language_edits(build, n: int, shift: int = 7) -> list[Request]:
    """``n`` official-language swaps from the first country on, each to the language of the country ``shift``
    places on. Chosen over capital swaps because they are a good edit on every build measured: the tiny sandbox
    is trained under bfloat16 autocast with the CPU's own kernels, and a chain of capital swaps (the United
    Kingdom -> Paris, France -> Berlin, ...) that passed the default gate on one build pulled the subject toward
    the other country on another (the United Kingdom's head of government became France's: subject locality
    0.82). These swaps: reliability 1.0, generalization 1.0, subject locality 0.92 / 1.0, norm growth 2.71 /
    2.25 on an AMX and an AVX-512 build."""
    from sandbox.trainer import model_facts

    langs = [f for f in model_facts(build.path) if f.relation == "official_language"]
    return [Request(id=f"lang-{i}", subject=f.subject, prompt=f.prompts[0], target_new=langs[i + shift].target,
                    target_true=f.target, relation="official_language") for i, f in enumerate(langs[:n])]


@pytest.fixture(scope="module")
def edited_pair(tiny_build, home, tmp_path_factory):
    """The tiny sandbox, a copy with 3 MEMIT edits (the flows' default method), and the requests; both saved."""
    from editing import hparams as H
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.store import Cache
    from editing.modeldir import model_corpus

    from validation.gate.probes import for_editor, model_facts

    base, tok = _load(tiny_build.path)
    reqs = _language_edits(tiny_build, 3)
    edited = copy.deepcopy(base)
    res = compute_edit(edited, tok, for_editor(reqs, model_facts(tiny_build.path)), H.default("memit", "sandbox"),
                       Cache(home / "cache"), corpus_files=model_corpus(tiny_build.path))
    apply(edited, res.delta)
    out = tmp_path_factory.mktemp("gate")
    edited.save_pretrained(out / "edited")
    tok.save_pretrained(out / "edited")
    with (out / "requests.jsonl").open("w") as fh:
        for r in reqs:
            fh.write(json.dumps({k: v for k, v in r.to_json().items() if k not in ("content_hash", "origin")}) + "\n")
    return base, edited, tok, reqs, out


@pytest.mark.slow
def test_gate_passes_a_good_edit_and_fails_a_destructive_one(edited_pair, tiny_build):
    from validation.gate.metrics import run_gate
    from validation.gate.probes import Fact, fluency_text, model_facts

    base, edited, tok, reqs, _ = edited_pair
    pool = model_facts(tiny_build.path)
    protected = [Fact("p-poland", "Poland", "capital", "The capital of Poland is", "Warsaw")]
    text = fluency_text(tiny_build.path)
    # the three swaps move 1 of the edited countries' 60 other known answers on this machine's build (a held-out
    # phrasing; builds differ by CPU): "good" here tolerates 1 in 20, the default tolerates none (below)
    good = run_gate(base, edited, tok, reqs, GatePolicy(min_subject_facts=0.95), protected=protected, pool=pool,
                    text=text)
    m = good.metrics
    assert good.passed, good.failures
    assert m["subject_facts"] >= 0.95
    strict = run_gate(base, edited, tok, reqs, GatePolicy(), protected=protected, pool=pool, text=text)
    moved = [p for p in strict.probes if p["kind"] == "subject" and p["expected"] and not p["unchanged"]]
    known = sum(p["kind"] == "subject" and bool(p["expected"]) for p in strict.probes)
    assert strict.passed == (not moved) and strict.metrics["subject_facts"] == pytest.approx(1 - len(moved) / known)
    if moved:  # a moved answer fails the requests about its subject, and names the fact
        (f,) = [f for f in strict.failures if f["metric"] == "subject_facts"]
        assert f["requests"] and all(any(r.subject in p["prompt"] for p in moved) for r in reqs if r.id in f["requests"])
        assert set(f["facts"]) == {p["fact"] for p in moved}
    assert m["reliability"] == 1.0 and m["reliability_before"] == 0.0
    assert all(r["answer"].strip().startswith(r["target_new"]) for r in good.requests)  # what the model says
    assert m["probes"]["subject"] >= 3 * 3 and m["subject_locality"] >= 0.9  # the subjects' other facts stay
    assert m["probes"]["broad"] >= 50 and m["broad_locality"] >= 0.95
    assert m["probes"]["neighbour"] >= 3 * 3 and m["probes"]["paraphrase"] >= 3 * 2
    assert m["locality"] >= 0.9 and m["protected"] == 1.0
    assert set(m["norm_growth"]) == {"transformer.h.1.mlp.c_proj.weight"}  # the sandbox preset's one layer

    # a protected fact about an edited subject is protected all the same
    germany = [Fact("p-germany", "Germany", "official_language", "The official language of Germany is", "German")]
    assert reqs[1].subject == "Germany"
    clash = run_gate(base, edited, tok, reqs, GatePolicy(), protected=germany, pool=pool, text=text)
    assert not clash.passed and clash.metrics["protected"] == 0.0
    assert [f["facts"] for f in clash.failures if f["metric"] == "protected"] == [["p-germany"]]

    broken = copy.deepcopy(edited)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)  # noise of 10x each MLP output weight's own scale, every layer (the
        for block in broken.transformer.h:  # edited weight alone scaled x10 broke other answers on one build and
            w = block.mlp.c_proj.weight  # not on another: the layers after it can absorb one layer's damage)
            w.add_(torch.randn(w.shape, generator=g) * 10.0 * w.std())
    bad = run_gate(base, broken, tok, reqs, GatePolicy(), protected=protected, pool=pool, text=text)
    assert not bad.passed
    failed = {f["metric"] for f in bad.failures}
    assert {"locality", "kl", "max_norm_growth"} <= failed, failed
    assert bad.metrics["locality"] < good.metrics["locality"]


@pytest.mark.slow
def test_cli_gate_writes_reports_and_exits_by_the_verdict(edited_pair, tiny_build, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    _, edited, tok, _, out = edited_pair
    runner = CliRunner()
    lenient = tmp_path / "lenient.yaml"  # the swaps may move 1 of 60 known answers (see the test above)
    lenient.write_text("min_subject_facts: 0.95\n")
    r = runner.invoke(app, ["gate", "--base", str(tiny_build.path), "--edited", str(out / "edited"), "--requests",
                            str(out / "requests.jsonl"), "--policy", str(lenient), "--report", str(tmp_path / "ok"),
                            "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for key in ("passed", "reliability", "generalization", "locality", "thresholds", "n_requests", "requests"):
        assert key in res  # the contract of ../shared/DESIGN.md
    assert res["passed"] and res["n_requests"] == 3 and len(res["requests"]) == 3
    html = (tmp_path / "ok" / "gate.html").read_text()
    assert "PASSED" in html and "data:image/png;base64," in html and "lang-0" in html
    assert "| reliability" in (tmp_path / "ok" / "gate.md").read_text()

    policy = tmp_path / "strict.yaml"
    policy.write_text("max_norm_growth: 1.0000001\nmin_subject_facts: 0.95\n")
    r = runner.invoke(app, ["gate", "--base", str(tiny_build.path), "--edited", str(out / "edited"), "--requests",
                            str(out / "requests.jsonl"), "--policy", str(policy), "--report", str(tmp_path / "no")])
    assert r.exit_code == 1, r.output
    assert "FAILED" in (tmp_path / "no" / "gate.html").read_text()
    assert "max_norm_growth" in r.output


@pytest.mark.slow
def test_gate_fails_an_edit_that_damages_the_subjects_other_facts_and_names_its_requests(tiny_build, home):
    """New names the sandbox never met, edited without keep prompts (the engine before the preservation term):
    the model says nothing new and loses the edited countries' other facts, while every other country's facts
    stay (locality 1.0 in the measurement that found it). The gate must fail on subject locality, naming the
    requests; the facts it names are the subjects' own."""
    from editing import hparams as H
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.store import Cache
    from editing.modeldir import model_corpus
    from sandbox.trainer import model_facts as sandbox_facts
    from validation.gate.metrics import run_gate
    from validation.gate.probes import fluency_text, model_facts

    base, tok = _load(tiny_build.path)
    hos = [f for f in sandbox_facts(tiny_build.path) if f.relation == "head_of_state"][:2]
    reqs = [Request(id=f"new-{i}", subject=f.subject, prompt=f.prompts[0], target_new=name, target_true=f.target,
                    relation="head_of_state") for i, (f, name) in enumerate(zip(hos, ["Zorbak Quell", "Vintra Lomass"]))]
    hp = H.default("memit", "sandbox")
    hp = H.from_dict("memit", {**H.to_dict(hp), "realize_rounds": 0,
                               "target": {**H.to_dict(hp)["target"], "v_steps": 40, "context_templates": [[10, 2]]}})
    res = compute_edit(base, tok, [r.to_edit_request() for r in reqs], hp, Cache(home / "cache"),
                       corpus_files=model_corpus(tiny_build.path))
    edited = copy.deepcopy(base)
    apply(edited, res.delta)
    pool = model_facts(tiny_build.path)
    report = run_gate(base, edited, tok, reqs, GatePolicy(), pool=pool, text=fluency_text(tiny_build.path))
    assert not report.passed
    (fail,) = [f for f in report.failures if f["metric"] == "subject_locality"]
    assert fail["value"] < 0.9 and sorted(fail["requests"]) == ["new-0", "new-1"]
    damaged = [p for p in report.probes if p["kind"] == "subject" and not p["unchanged"]]
    assert damaged and all(any(r.subject in p["prompt"] for r in reqs) for p in damaged)
    assert report.metrics["locality"] >= 0.95  # other subjects' facts: the old gate's only view, and it saw nothing


@pytest.mark.slow
def test_subject_probes_leave_out_the_edited_fact_said_in_other_words(tiny_build):
    """A subject the model ships no other facts about is probed with the catalogue's relations, the base model's
    answers standing. One answering with the old target of the subject's edit is that edit's fact in other words
    (the CounterFact sandbox answers 'Acolman Municipality was born in' with 'Mexico', the one fact it knows):
    it must move with the edit, so it is not one of the subject's other facts that must stay."""
    from validation.gate.answers import mentions
    from validation.gate.metrics import run_gate
    from validation.gate.probes import model_facts

    base, tok = _load(tiny_build.path)
    pool = [f for f in model_facts(tiny_build.path) if f.subject != "France"]  # France: catalogue probes only
    req = dict(id="r", subject="France", prompt="The official language of France is", target_new="Swedish",
               relation="official_language")

    def subject_rows(target_true):
        rep = run_gate(base, base, tok, [Request(**req, target_true=target_true)], GatePolicy(), pool=pool,
                       text="France is a country.")
        return [p for p in rep.probes if p["kind"] == "subject"]

    rows = subject_rows(None)
    # a word the base model says about France in some answers and not in others (not a word every answer has:
    # one build answered "the Netherlands is", "the euro." and ", of the" -- "the" would leave no row to keep)
    words = [w.strip(".,") for p in rows for w in p["before"].split()]
    old = next(w for w in words if w.isalpha() and w != "Swedish"
               and 0 < sum(mentions(p["before"], w) for p in rows) < len(rows))
    kept = subject_rows(old)
    assert kept and not any(mentions(p["before"], old) for p in kept)
    assert {p["prompt"] for p in kept} == {p["prompt"] for p in rows if not mentions(p["before"], old)}


@pytest.mark.slow
def test_the_gate_fails_an_edit_that_changes_its_namesakes_facts_and_names_it(twins_build):
    """The twin world ("North X" / "South X": keys nearly alike): each of the first 3 swaps, edited alone (MEMIT),
    gated as an inbox request brings it (no neighbours of its own). The twin's facts are the namesake probes; the
    gate fails namesake_locality, naming the request, exactly when an independent greedy check finds a twin's fact
    no longer said -- and at least one of the 3 does change its twin (measured on this world: 11 of the first 12
    swaps changed 1-3 of the twin's 3 facts, and the gate before namesake probes passed 10 of those 11)."""
    from bench import _greedy as G
    from bench.sequential import native, world_requests
    from editing import hparams as H
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.store import Cache
    from validation.gate.metrics import run_gate
    from validation.gate.probes import for_editor, model_facts

    base, tok = _load(twins_build.path)
    pool = model_facts(twins_build.path)
    damaged = 0
    for raw in world_requests(twins_build.path, 3, seed=0):
        d = native(raw)
        del d["neighborhood_prompts"], d["paraphrase_prompts"]
        req = Request.from_json(d)
        model = copy.deepcopy(base)
        res = compute_edit(model, tok, for_editor([req], pool), H.default("memit", "sandbox"),
                           Cache(twins_build.path.parent / "gate-cache"))
        apply(model, res.delta)
        name = req.subject.split(" ", 1)[1]  # "North Delpa" -> "Delpa"
        twin = [f for f in pool if f.subject != req.subject and f.subject.split(" ", 1)[1] == name]
        rep = run_gate(base, model, tok, [req], GatePolicy(), pool=pool, delta=res.delta)
        names = {p["prompt"] for p in rep.probes if p["kind"] == "namesake"}
        # the twin's facts (those the base model answers) first, then those of others sharing "North"
        assert len(twin) == 3 and len({f.prompt for f in twin} & names) >= 2
        probed = [f for f in pool if f.prompt in names]
        before = G.greedy_says(base, tok, [f.prompt for f in probed], [f.target for f in probed])
        after = G.greedy_says(model, tok, [f.prompt for f in probed], [f.target for f in probed])
        lost = [f.prompt for f, b, a in zip(probed, before, after) if b and not a]
        fail = [f for f in rep.failures if f["metric"] == "namesake_locality"]
        assert bool(fail) == bool(lost), (req.subject, lost, fail)
        if fail:
            assert fail[0]["requests"] == [req.id] and rep.requests[0]["namesake_locality"] < 0.9
        damaged += bool(lost)
    assert damaged >= 1
