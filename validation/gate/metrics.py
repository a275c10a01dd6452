"""The release gate: does an edited model do what its requests asked, and nothing else?

    policy = load_policy(path)            # or GatePolicy() for the defaults
    report = run_gate(base, edited, tokenizer, requests, policy, protected=facts, pool=model_facts(dir))
    report.passed, report.failures        # which threshold failed, and for which requests

Metrics, base model vs edited model. An edit counts when the edited model *says* the new fact: greedy
decoding from the prompt begins with the target, compared as :func:`validation.gate.answers.says` documents
(whitespace-normalised prefix, ending at a word boundary). Locality probes compare the greedy answers of the
two models token for token (as many tokens as the expected answer has, else ``answer_tokens``):

* **reliability** -- share of requests whose greedy answer on the request's prompt says target_new;
  ``reliability_p`` is CounterFact's secondary measure, p(target_new) > p(target_true) (multi-token targets
  scored by whole-sequence log-probability; teacher-forced argmax without a target_true);
* **generalization** -- the same on paraphrases (the request's own, else the relation catalogue's), any word
  order; ``generalization_p`` likewise;
* **subject locality** -- share of the edited subjects' *other* facts (the request's ``attribute_prompts``, the
  subject's facts in the model's ``facts.jsonl``, else the catalogue's other relations) whose greedy answer
  is unchanged: an edit of Germany's head of government must leave Germany's capital alone. Blame: the
  requests whose subject kept less than the threshold;
* **locality** -- share of neighbour probes (each request's own, or facts of other subjects with its relation),
  broad probes (a fixed seeded sample of ``locality_sample`` from the probe bank: every fact the model ships and
  the catalogue about the subjects the ledger has seen, that the base model answers) and protected facts whose
  greedy answer is unchanged, and the mean KL(base || edited) of the next token on them; ``protected`` is the
  share for the protected facts alone. Blame: a neighbour's request, and any request whose new target a
  changed answer now says;
* **retention** -- share of earlier edits (requests applied by earlier versions, in effect in the parent: a
  seeded sample of ``retention_sample``, less the facts this batch rewrites) whose greedy answer still says
  their new target, of those the parent says: a schedule of edits must not undo the ones before it. Blame:
  the requests about a lost edit's subject, and any request whose new target the lost edit's prompt now says;
* **fluency** -- relative drop of the n-gram entropy of greedy generations (ROME's measure: weighted 2-
  and 3-gram entropies) on prompts about the edited subjects, and the perplexity ratio on a fixed text
  sample less its sentences that name an edited subject (their old facts should get less likely). A failed
  entropy drop names the requests of the subjects whose generations lost the most;
* **norm growth** -- ‖W_edited‖ / ‖W_base‖ (Frobenius) of every matrix the edit changed.

Base-model results are memoised in a :class:`BaseCache`, so that bisection gates many subsets of a batch
against one base model without recomputing them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editing.score import score_targets

from . import probes as probe_sets
from .answers import mentions, says
from .blame import NORM_BLAME_MARGIN, entropy_blame, failed_thresholds, norm_blame
from .measures import (_answer_tokens, answer_text, edited_matrices, greedy, mean, ngram_entropy, perplexity, share,
                       without_subjects)
from .policy import GatePolicy
from ..requests import Request


# --------------------------------------------------------------------------------------------------
# Model probes


# --------------------------------------------------------------------------------------------------
# The gate


@dataclass(frozen=True)
class Probe:
    kind: str  # "paraphrase" | "neighbour" | "protected"
    request_id: str | None  # None for protected facts
    prompt: str
    target: str  # expected answer: target_new for paraphrases, the kept answer for neighbours / protected
    target_true: str | None = None  # paraphrases: the old answer
    fact_id: str | None = None


@dataclass
class BaseCache:
    """Base-model results by prompt, kept across gate runs against one base model (bisection)."""

    scores: dict[tuple[str, str], Any] = field(default_factory=dict)
    greedy: dict[tuple[str, int], tuple[list[int], torch.Tensor]] = field(default_factory=dict)
    fluency: dict[str, float] = field(default_factory=dict)


@dataclass
class GateReport:
    passed: bool
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    failures: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_requests(self) -> list[str]:
        """Ids named by a failed threshold (a request the gate can blame)."""
        out: list[str] = []
        for f in self.failures:
            out.extend(x for x in f.get("requests", []) if x not in out)
        return out

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        return {"passed": self.passed, "reliability": m["reliability"], "generalization": m["generalization"],
                "locality": m["locality"], "thresholds": self.thresholds, "n_requests": len(self.requests),
                "metrics": m, "failures": self.failures, "requests": self.requests, "probes": self.probes,
                "seconds": round(self.seconds, 3), **self.meta}


def _score_many(model, tok, pairs: list[tuple[str, str]], cache: dict | None) -> dict[tuple[str, str], Any]:
    todo = [p for p in dict.fromkeys(pairs) if cache is None or p not in cache]
    got = dict(zip(todo, score_targets(model, tok, [p for p, _ in todo], [t for _, t in todo]))) if todo else {}
    if cache is not None:
        cache.update(got)
        return {p: cache[p] for p in pairs}
    return got


def _greedy_many(model, tok, items: list[tuple[str, int]], cache: dict | None) -> dict[tuple[str, int], tuple]:
    """(prompt, n) -> (greedy token ids, first-token log-probs); prompt tokenized as the scorer does."""
    todo = [it for it in dict.fromkeys(items) if cache is None or it not in cache]
    got: dict[tuple[str, int], tuple] = {}
    if todo:
        ids = [tok(p)["input_ids"] for p, _ in todo]
        outs, first = greedy(model, tok, ids, [n for _, n in todo])
        got = {it: (o, f) for it, o, f in zip(todo, outs, first)}
    if cache is not None:
        cache.update(got)
        return {it: cache[it] for it in items}
    return got


def _prefer_new(new, true) -> bool:
    return new.logprob > true.logprob


def _says_many(model, tok, items: list[tuple[str, str]], cache: dict | None) -> dict[tuple[str, str], tuple[bool, str]]:
    """(prompt, target) -> (the greedy answer says the target, the answer's text): :func:`validation.gate.answers.says`
    on a greedy continuation two tokens longer than the target, so that a longer word shows ("Parisian")."""
    gen = {it: (it[0], _answer_tokens(tok, *it) + 2) for it in dict.fromkeys(items)}
    got = _greedy_many(model, tok, list(gen.values()), cache)
    out = {}
    for it, g in gen.items():
        answer = answer_text(tok, got[g][0])
        out[it] = (says(answer, it[1]), answer)
    return out


def run_gate(base: nn.Module, edited: nn.Module, tok, requests: list[Request], policy: GatePolicy | None = None,
             protected: list[probe_sets.Fact] | None = None, pool: list[probe_sets.Fact] | None = None, text: str | None = None,
             cache: BaseCache | None = None, delta: Any = None, subjects: list[str] | tuple[str, ...] = (),
             earlier: list[Request] | tuple[Request, ...] = ()) -> GateReport:
    """Gate ``edited`` against ``base`` for ``requests`` (see the module docstring). ``delta`` (the edit's
    :class:`editing.delta.Delta`, one rank-one part per request in order) lets a failed norm growth name the
    requests behind it (:func:`norm_blame`); ``subjects`` (those the ledger has seen) widen the probe bank;
    ``earlier`` are the requests earlier versions applied (the retention suite)."""
    t0 = time.perf_counter()
    policy = policy or GatePolicy()
    protected = list(protected or [])
    pool = list(pool or [])
    cache = cache if cache is not None else BaseCache()
    edited_subjects = {r.subject for r in requests}

    # ---- probe suites
    para: list[Probe] = []
    neigh: list[Probe] = []
    cand: list[tuple[str, Request, probe_sets.Fact]] = []
    for r in requests:
        for p in probe_sets.paraphrases(r, policy.paraphrases, pool=pool):
            para.append(Probe("paraphrase", r.id, p, r.target_new, r.target_true))
        if r.neighborhood_prompts:
            neigh.extend(Probe("neighbour", r.id, p, t) for p, t in r.neighborhood_prompts)
        elif policy.neighbours:
            cand.extend(("neighbour", r, f) for f in probe_sets.neighbour_candidates(
                r, pool + protected, edited_subjects, 3 * policy.neighbours, policy.seed))
        if policy.namesakes:  # whatever neighbours r brings: the subjects an edit of r is likeliest to reach
            cand.extend(("namesake", r, f) for f in probe_sets.namesakes(
                r, pool + protected, edited_subjects, 3 * policy.namesakes, policy.seed))
    names: list[Probe] = []
    if cand:  # sampled neighbours and namesakes: only facts the base model answers correctly
        sc = _score_many(base, tok, [(f.prompt, f.target) for _, _, f in cand], cache.scores)
        taken: Counter = Counter()
        have = {(p.request_id, p.prompt) for p in neigh}
        for kind, r, f in cand:
            cap = policy.neighbours if kind == "neighbour" else policy.namesakes
            if sc[(f.prompt, f.target)].argmax and taken[kind, r.id] < cap and (r.id, f.prompt) not in have:
                taken[kind, r.id] += 1
                have.add((r.id, f.prompt))
                (neigh if kind == "neighbour" else names).append(Probe(kind, r.id, f.prompt, f.target, fact_id=f.id))
    # every protected fact, even one whose subject an edit touches: that is what protection means
    prot = [Probe("protected", None, f.prompt, f.target, fact_id=f.id) for f in protected]
    ids_of: dict[str, list[str]] = {}
    for r in requests:
        ids_of.setdefault(r.subject, []).append(r.id)
    subj = [Probe("subject", ",".join(ids_of[s]), prompt, target or "", fact_id=fid)
            for s, subject_rows in probe_sets.subject_probes(requests, pool, policy.subject_probes, policy.seed).items()
            for prompt, target, fid in subject_rows]
    taken_prompts = {p.prompt for p in neigh + names + prot + subj + para} | {r.text for r in requests}
    bank = [x for x in probe_sets.probe_bank(pool, subjects, edited_subjects, policy.seed) if x[0] not in taken_prompts]
    bank = bank[:2 * policy.locality_sample]  # enough left after the base model's answers are filtered
    broad_cand = [Probe("broad", None, prompt, target or "", fact_id=fid) for prompt, target, fid in bank]

    # ---- locality: greedy answers, base vs edited; a probe's answer is its target's tokens, or a few tokens
    def n_tokens(p: Probe) -> int:
        return _answer_tokens(tok, p.prompt, p.target) if p.target else policy.answer_tokens

    b_all = _greedy_many(base, tok, [(p.prompt, n_tokens(p)) for p in subj + broad_cand], cache.greedy)

    def answered(p: Probe) -> bool:
        """The base model answers the probe: says its target, or (no target known) is confident of its first
        token. Subject probes are kept whatever the base says: what it says about the subject must stay."""
        ids, lp = b_all[(p.prompt, n_tokens(p))]
        if p.target:
            return says(answer_text(tok, ids), p.target)
        return float(lp.max().exp()) >= policy.probe_confidence

    old_targets: dict[str, set[str]] = {}
    for r in requests:
        if r.target_true:
            old_targets.setdefault(r.subject, set()).add(r.target_true)
    subject_of = {",".join(ids): s for s, ids in ids_of.items()}

    def restates(p: Probe) -> bool:
        """A catalogue probe (no answer known) whose base answer names an old target of its subject's requests is
        the edited fact in other words ("Acolman is located in" -> "the State of Mexico" for an edit of where
        Acolman is): it is to move with the edit, not to stay — counted, it would call the edit's
        generalisation damage. A subject the model knows one fact about answers most relations with it."""
        if p.target:
            return False
        text = answer_text(tok, b_all[(p.prompt, n_tokens(p))][0])
        return any(mentions(text, t) for t in old_targets.get(subject_of.get(p.request_id, ""), ()))

    subj = [p for p in subj if (p.target or answered(p)) and not restates(p)]
    broad = [p for p in broad_cand if answered(p)][:policy.locality_sample]
    loc = neigh + names + prot + broad + subj
    items = [(p.prompt, n_tokens(p)) for p in loc]
    g_after = _greedy_many(edited, tok, items, None)
    g_before = _greedy_many(base, tok, items, cache.greedy)
    probe_rows = []
    for p, it in zip(loc, items):
        (a_ids, a_lp), (b_ids, b_lp) = g_after[it], g_before[it]
        kl = float(torch.sum(b_lp.exp() * (b_lp - a_lp)))
        probe_rows.append({"kind": p.kind, "request": p.request_id, "fact": p.fact_id, "prompt": p.prompt,
                           "expected": p.target or None, "before": tok.decode(b_ids), "after": tok.decode(a_ids),
                           "unchanged": a_ids == b_ids, "kl": round(kl, 6)})

    # ---- reliability and generalization: what the model says (greedy), and CounterFact's p_new > p_true
    pairs = []
    for r in requests:
        pairs.append((r.text, r.target_new))
        if r.target_true:
            pairs.append((r.text, r.target_true))
    for p in para:
        pairs.append((p.prompt, p.target))
        if p.target_true:
            pairs.append((p.prompt, p.target_true))
    after = _score_many(edited, tok, pairs, None)
    before = _score_many(base, tok, pairs, cache.scores)
    said = [(r.text, r.target_new) for r in requests] + [(p.prompt, p.target) for p in para]
    s_after = _says_many(edited, tok, said, None)
    s_before = _says_many(base, tok, said, cache.greedy)

    def prefer(scores, prompt: str, new: str, true: str | None) -> bool:
        """CounterFact's measure: p(new) > p(true); without a true target, teacher-forced argmax."""
        s_new = scores[(prompt, new)]
        return _prefer_new(s_new, scores[(prompt, true)]) if true else s_new.argmax

    # ---- per request
    rows = []
    for r in requests:
        mine = [p for p in para if p.request_id == r.id]
        nb = [x for x in probe_rows if x["kind"] == "neighbour" and x["request"] == r.id]
        ns = [x for x in probe_rows if x["kind"] == "namesake" and x["request"] == r.id]
        sp = [x for x in probe_rows if x["kind"] == "subject" and r.id in x["request"].split(",")]
        rows.append({
            "id": r.id, "subject": r.subject, "prompt": r.text, "target_new": r.target_new,
            "target_true": r.target_true,
            "answer_before": s_before[(r.text, r.target_new)][1], "answer": s_after[(r.text, r.target_new)][1],
            "p_new_before": before[(r.text, r.target_new)].prob, "p_new_after": after[(r.text, r.target_new)].prob,
            "p_true_before": before[(r.text, r.target_true)].prob if r.target_true else None,
            "p_true_after": after[(r.text, r.target_true)].prob if r.target_true else None,
            "reliable": s_after[(r.text, r.target_new)][0], "reliable_before": s_before[(r.text, r.target_new)][0],
            "reliable_p": prefer(after, r.text, r.target_new, r.target_true),
            "reliable_p_before": prefer(before, r.text, r.target_new, r.target_true),
            "generalization": share([s_after[(p.prompt, p.target)][0] for p in mine]),
            "generalization_before": share([s_before[(p.prompt, p.target)][0] for p in mine]),
            "generalization_p": share([prefer(after, p.prompt, p.target, p.target_true) for p in mine]),
            "paraphrases": len(mine),
            "subject_locality": share([x["unchanged"] for x in sp]), "subject_probes": len(sp),
            "subject_facts": share([x["unchanged"] for x in sp if x["expected"]]),
            "locality": share([x["unchanged"] for x in nb]), "neighbours": len(nb),
            "namesake_locality": share([x["unchanged"] for x in ns]), "namesakes": len(ns),
        })

    # ---- retention: the earlier edits the parent says must still be said
    probe_rows += retention_rows(base, edited, tok, requests, earlier, policy, cache)

    # ---- fluency and norms
    gen_by = {t.replace("{}", r.subject): r.subject for r in requests for t in probe_sets.GENERATION_PROMPTS[:2]}
    gen_items = [(g, policy.generation_tokens) for g in gen_by] if policy.generation_tokens else []
    g_a, g_b = _greedy_many(edited, tok, gen_items, None), _greedy_many(base, tok, gen_items, cache.greedy)
    ent = [(gen_by[it[0]], ngram_entropy(tok.decode(g_b[it][0])), ngram_entropy(tok.decode(g_a[it][0])))
           for it in gen_items]  # (subject, before, after) per generation prompt
    ent_before, ent_after = mean([b for _, b, _ in ent]), mean([a for _, _, a in ent])
    text = without_subjects(text if text is not None else probe_sets.FLUENCY_TEXT, edited_subjects) or probe_sets.FLUENCY_TEXT
    if text not in cache.fluency:
        cache.fluency[text] = perplexity(base, tok, text)
    ppl_b, ppl_a = cache.fluency[text], perplexity(edited, tok, text)
    norms = edited_matrices(base, edited)

    def kept(*kinds: str) -> float | None:
        return share([x["unchanged"] for x in probe_rows if x["kind"] in kinds])

    m: dict[str, Any] = {
        "reliability": share([x["reliable"] for x in rows]),
        "reliability_before": share([x["reliable_before"] for x in rows]),
        "reliability_p": share([x["reliable_p"] for x in rows]),
        "reliability_p_before": share([x["reliable_p_before"] for x in rows]),
        "generalization": share([s_after[(p.prompt, p.target)][0] for p in para]),
        "generalization_before": share([s_before[(p.prompt, p.target)][0] for p in para]),
        "generalization_p": share([prefer(after, p.prompt, p.target, p.target_true) for p in para]),
        "subject_locality": kept("subject"),
        # of those, the facts whose answer is known (the model's facts.jsonl, a request's attribute_prompts)
        "subject_facts": share([x["unchanged"] for x in probe_rows if x["kind"] == "subject" and x["expected"]]),
        "locality": kept("neighbour", "protected", "broad"),
        "neighbour_locality": kept("neighbour"),
        "namesake_locality": kept("namesake"),
        "broad_locality": kept("broad"),
        "protected": kept("protected"),
        "retention": kept("earlier"),
        "kl": mean([x["kl"] for x in probe_rows if x["kind"] not in ("subject", "earlier")]),
        "subject_kl": mean([x["kl"] for x in probe_rows if x["kind"] == "subject"]),
        "entropy_before": ent_before, "entropy_after": ent_after,
        "entropy_drop": (ent_before - ent_after) / ent_before if ent_before else 0.0,
        "entropy_blame": entropy_blame(ent, policy.max_entropy_drop),
        "perplexity_before": ppl_b, "perplexity_after": ppl_a, "perplexity_ratio": ppl_a / ppl_b,
        "norm_growth": norms, "max_norm_growth": max(norms.values(), default=1.0),
        "norm_blame": (norm_blame(base, delta, [r.id for r in requests], NORM_BLAME_MARGIN * policy.max_norm_growth)
                       if delta is not None and max(norms.values(), default=1.0) > policy.max_norm_growth else []),
        "probes": {"paraphrase": len(para), "neighbour": len(neigh), "namesake": len(names), "protected": len(prot),
                   "subject": len(subj),
                   "broad": len(broad), "generation": len(gen_items),
                   "earlier": sum(x["kind"] == "earlier" for x in probe_rows)},
    }
    failures = failed_thresholds(policy, m, rows, probe_rows, requests)
    return GateReport(passed=not failures, metrics=m, thresholds=policy.thresholds(), failures=failures,
                      requests=rows, probes=probe_rows, seconds=time.perf_counter() - t0)


def retention_rows(base: nn.Module, edited: nn.Module, tok, requests: list[Request], earlier, policy: GatePolicy,
                   cache: BaseCache) -> list[dict[str, Any]]:
    """One probe row per earlier edit checked: a seeded sample of ``earlier`` less the facts ``requests``
    rewrite, kept where the base (the parent) says its new target; ``unchanged``: the edited model still does."""
    import random

    touched = {r.fact_key() for r in requests}
    prev = [e for e in earlier if e.fact_key() not in touched]
    if policy.retention_sample and len(prev) > policy.retention_sample:
        prev = random.Random(policy.seed).sample(prev, policy.retention_sample)
    items = [(e.text, e.target_new) for e in prev]
    before = _says_many(base, tok, items, cache.greedy)
    held = [e for e in prev if before[(e.text, e.target_new)][0]]
    after = _says_many(edited, tok, [(e.text, e.target_new) for e in held], None)
    return [{"kind": "earlier", "request": e.id, "subject": e.subject, "fact": e.id, "prompt": e.text,
             "expected": e.target_new, "before": before[(e.text, e.target_new)][1],
             "after": after[(e.text, e.target_new)][1], "unchanged": after[(e.text, e.target_new)][0], "kl": None}
            for e in held]
