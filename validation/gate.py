"""The release gate: does an edited model do what its requests asked, and nothing else?

    policy = load_policy(path)            # or GatePolicy() for the defaults
    report = run_gate(base, edited, tokenizer, requests, policy, protected=facts, pool=model_facts(dir))
    report.passed, report.failures        # which threshold failed, and for which requests

Metrics, base model vs edited model. An edit counts when the edited model *says* the new fact: greedy
decoding from the prompt begins with the target, compared as :func:`validation.answers.says` documents
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
* **fluency** -- relative drop of the n-gram entropy of greedy generations (ROME's measure: weighted 2-
  and 3-gram entropies) on prompts about the edited subjects, and the perplexity ratio on a fixed text
  sample less its sentences that name an edited subject (their old facts should get less likely). A failed
  entropy drop names the requests of the subjects whose generations lost the most;
* **norm growth** -- ‖W_edited‖ / ‖W_base‖ (Frobenius) of every matrix the edit changed.

Base-model results are memoised in a :class:`BaseCache`, so that bisection gates many subsets of a batch
against one base model without recomputing them.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from editing.hparams import HparamsError, check_fields, from_mapping
from editing.score import score_targets
from editing.tokens import prompt_target_ids

from . import probes as P
from .answers import says
from .requests import Request


class PolicyError(ValueError):
    """A gate policy file is wrong (the message names the key)."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate and the size of its probe suites (YAML keys = field names)."""

    min_reliability: float = 0.95  # share of requests whose greedy answer says target_new
    min_generalization: float = 0.8  # share of paraphrase probes whose greedy answer says target_new
    min_subject_locality: float = 0.9  # share of the edited subjects' other facts whose greedy answer is unchanged
    min_locality: float = 0.95  # share of neighbour, broad and protected probes whose greedy answer is unchanged
    min_protected: float = 1.0  # share of protected facts whose greedy answer is unchanged
    max_kl: float = 0.5  # mean KL(base || edited), nats, of the next token on neighbour, broad and protected prompts
    max_entropy_drop: float = 0.1  # relative drop of the n-gram entropy of greedy generations
    max_perplexity_ratio: float = 1.25  # perplexity on the fixed text sample, edited / base
    # ‖W_edited‖ / ‖W_base‖ of each edited matrix: an early warning, since growing norms precede the collapse of
    # sequentially edited models (Gupta et al. 2024); MEMIT's 3 edits on the tiny sandbox grow c_proj 1.9x
    max_norm_growth: float = 3.0
    paraphrases: int = 3  # catalogue paraphrases per request (when it brings none)
    neighbours: int = 5  # sampled neighbours per request (when it brings none), base-correct only
    subject_probes: int = 8  # probes of each edited subject's other facts (0: all there are)
    locality_sample: int = 200  # broad-locality probes: a seeded sample of the probe bank the base model answers
    answer_tokens: int = 3  # greedy tokens compared on a probe whose answer is not known (the base model's stands)
    probe_confidence: float = 0.5  # such a probe counts only where the base model's first token is this likely
    generation_tokens: int = 24  # greedy tokens per fluency generation
    seed: int = 0  # neighbour, subject-probe and probe-bank sampling

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except HparamsError as e:
            raise PolicyError(str(e)) from None
        for name in ("min_reliability", "min_generalization", "min_subject_locality", "min_locality",
                     "min_protected", "probe_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PolicyError(f"'{name}': expected a share in [0, 1], found {getattr(self, name)}")
        for name in ("max_kl", "max_entropy_drop", "max_perplexity_ratio", "max_norm_growth"):
            if getattr(self, name) < 0:
                raise PolicyError(f"'{name}': expected a value >= 0, found {getattr(self, name)}")
        for name in ("paraphrases", "neighbours", "subject_probes", "locality_sample", "answer_tokens",
                     "generation_tokens"):
            if getattr(self, name) < 0:
                raise PolicyError(f"'{name}': expected a count >= 0, found {getattr(self, name)}")

    def thresholds(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k.startswith(("min_", "max_"))}


def load_policy(path: str | Path | None) -> GatePolicy:
    """The policy in a YAML file (unknown keys and wrong types are errors naming the key); None: defaults."""
    if path is None:
        return GatePolicy()
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{p}: cannot read the gate policy: {e}") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"{p}: invalid YAML: {e}") from None
    try:
        return from_mapping(GatePolicy, data)
    except (HparamsError, PolicyError) as e:
        raise PolicyError(f"{p}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Model probes


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)


def _pad_id(tok) -> int:
    return next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)


@torch.no_grad()
def greedy(model: nn.Module, tok, prompts: list[list[int]], n_tokens: list[int], batch_size: int = 64
           ) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy continuations (``n_tokens[i]`` tokens of ``prompts[i]``, token ids) and the log-probabilities
    of the first next token (V,), batched with left padding (explicit position ids)."""
    dev = _device(model)
    pad = _pad_id(tok)
    limit = _max_positions(model)
    outs: list[list[int]] = [[] for _ in prompts]
    first: list[torch.Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            seqs = [list(prompts[i]) for i in chunk]
            steps = max(n_tokens[i] for i in chunk)
            for step in range(max(steps, 1)):
                seqs = [x[-limit:] for x in seqs]  # keep the window the model can see
                T = max(len(x) for x in seqs)
                ids = torch.full((len(seqs), T), pad, dtype=torch.long)
                att = torch.zeros((len(seqs), T), dtype=torch.long)
                for r, x in enumerate(seqs):
                    ids[r, T - len(x):] = torch.tensor(x)
                    att[r, T - len(x):] = 1
                pos = (att.cumsum(-1) - 1).clamp(min=0)  # (B, T)
                logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev),
                               position_ids=pos.to(dev)).logits[:, -1].float()  # (B, V)
                nxt = logits.argmax(-1).tolist()
                if step == 0:
                    lp = F.log_softmax(logits, -1).cpu()
                    for r, i in enumerate(chunk):
                        first[i] = lp[r]
                for r, i in enumerate(chunk):
                    if step < n_tokens[i]:
                        outs[i].append(nxt[r])
                    seqs[r].append(nxt[r])
    finally:
        model.train(was)
    return outs, first  # type: ignore[return-value]


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy: a weighted mean of the 2- and 3-gram entropies (bits) of the words."""
    words = text.split()
    hs = []
    for n in ns:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        hs.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, hs)) / sum(weights)


@torch.no_grad()
def perplexity(model: nn.Module, tok, text: str, max_len: int = 256) -> float:
    """Perplexity of ``text`` in windows of ``max_len`` tokens."""
    ids = tok(text)["input_ids"]
    dev = _device(model)
    max_len = min(max_len, _max_positions(model) - 1)
    nll, count = 0.0, 0
    for s in range(0, max(len(ids) - 1, 1), max_len):
        window = ids[s:s + max_len + 1]
        if len(window) < 2:
            break
        x = torch.tensor([window], device=dev)
        logits = model(input_ids=x[:, :-1]).logits.float()  # (1, T, V)
        nll += float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
        count += len(window) - 1
    return math.exp(nll / max(count, 1))


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


def _answer_tokens(tok, prompt: str, target: str) -> int:
    ids, start = prompt_target_ids(tok, prompt, target)
    return max(1, len(ids) - start)


def _prefer_new(new, true) -> bool:
    return new.logprob > true.logprob


def edited_matrices(base: nn.Module, edited: nn.Module) -> dict[str, float]:
    """name -> ‖W_edited‖ / ‖W_base‖ for every parameter that differs."""
    bp = dict(base.named_parameters())
    out = {}
    for name, w in edited.named_parameters():
        b = bp.get(name)
        if b is not None and b.shape == w.shape and not torch.equal(b, w):
            nb = float(b.detach().double().norm())
            out[name] = float(w.detach().double().norm()) / nb if nb > 0 else math.inf
    return out


def _says_many(model, tok, items: list[tuple[str, str]], cache: dict | None) -> dict[tuple[str, str], tuple[bool, str]]:
    """(prompt, target) -> (the greedy answer says the target, the answer's text): :func:`validation.answers.says`
    on a greedy continuation two tokens longer than the target, so that a longer word shows ("Parisian")."""
    gen = {it: (it[0], _answer_tokens(tok, *it) + 2) for it in dict.fromkeys(items)}
    got = _greedy_many(model, tok, list(gen.values()), cache)
    out = {}
    for it, g in gen.items():
        answer = answer_text(tok, got[g][0])
        out[it] = (says(answer, it[1]), answer)
    return out


def answer_text(tok, ids: list[int]) -> str:
    """The text of greedy token ids up to the first end-of-text token (decoding past it with special tokens
    skipped would glue the next text on: "Merz<eos>The" read as "MerzThe")."""
    eos = tok.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    return tok.decode(ids, skip_special_tokens=True)


def run_gate(base: nn.Module, edited: nn.Module, tok, requests: list[Request], policy: GatePolicy | None = None,
             protected: list[P.Fact] | None = None, pool: list[P.Fact] | None = None, text: str | None = None,
             cache: BaseCache | None = None, delta: Any = None, subjects: list[str] | tuple[str, ...] = ()
             ) -> GateReport:
    """Gate ``edited`` against ``base`` for ``requests`` (see the module docstring). ``delta`` (the edit's
    :class:`editing.delta.Delta`, one rank-one part per request in order) lets a failed norm growth name the
    requests behind it (:func:`norm_blame`); ``subjects`` (those the ledger has seen) widen the probe bank."""
    t0 = time.perf_counter()
    policy = policy or GatePolicy()
    protected = list(protected or [])
    pool = list(pool or [])
    cache = cache if cache is not None else BaseCache()
    edited_subjects = {r.subject for r in requests}

    # ---- probe suites
    para: list[Probe] = []
    neigh: list[Probe] = []
    cand: list[tuple[Request, P.Fact]] = []
    for r in requests:
        for p in P.paraphrases(r, policy.paraphrases):
            para.append(Probe("paraphrase", r.id, p, r.target_new, r.target_true))
        if r.neighborhood_prompts:
            neigh.extend(Probe("neighbour", r.id, p, t) for p, t in r.neighborhood_prompts)
        elif policy.neighbours:
            cand.extend((r, f) for f in P.neighbour_candidates(r, pool + protected, edited_subjects,
                                                                3 * policy.neighbours, policy.seed))
    if cand:  # sampled neighbours: only facts the base model answers correctly
        sc = _score_many(base, tok, [(f.prompt, f.target) for _, f in cand], cache.scores)
        taken: Counter = Counter()
        for r, f in cand:
            if sc[(f.prompt, f.target)].argmax and taken[r.id] < policy.neighbours:
                taken[r.id] += 1
                neigh.append(Probe("neighbour", r.id, f.prompt, f.target, fact_id=f.id))
    # every protected fact, even one whose subject an edit touches: that is what protection means
    prot = [Probe("protected", None, f.prompt, f.target, fact_id=f.id) for f in protected]
    ids_of: dict[str, list[str]] = {}
    for r in requests:
        ids_of.setdefault(r.subject, []).append(r.id)
    subj = [Probe("subject", ",".join(ids_of[s]), prompt, target or "", fact_id=fid)
            for s, probes in P.subject_probes(requests, pool, policy.subject_probes, policy.seed).items()
            for prompt, target, fid in probes]
    taken_prompts = {p.prompt for p in neigh + prot + subj + para} | {r.text for r in requests}
    bank = [x for x in P.probe_bank(pool, subjects, edited_subjects, policy.seed) if x[0] not in taken_prompts]
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

    subj = [p for p in subj if p.target or answered(p)]
    broad = [p for p in broad_cand if answered(p)][:policy.locality_sample]
    loc = neigh + prot + broad + subj
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
            "generalization": _share([s_after[(p.prompt, p.target)][0] for p in mine]),
            "generalization_before": _share([s_before[(p.prompt, p.target)][0] for p in mine]),
            "generalization_p": _share([prefer(after, p.prompt, p.target, p.target_true) for p in mine]),
            "paraphrases": len(mine),
            "subject_locality": _share([x["unchanged"] for x in sp]), "subject_probes": len(sp),
            "locality": _share([x["unchanged"] for x in nb]), "neighbours": len(nb),
        })

    # ---- fluency and norms
    gen_by = {t.replace("{}", r.subject): r.subject for r in requests for t in P.GENERATION_PROMPTS[:2]}
    gen_items = [(g, policy.generation_tokens) for g in gen_by] if policy.generation_tokens else []
    g_a, g_b = _greedy_many(edited, tok, gen_items, None), _greedy_many(base, tok, gen_items, cache.greedy)
    ent = [(gen_by[it[0]], ngram_entropy(tok.decode(g_b[it][0])), ngram_entropy(tok.decode(g_a[it][0])))
           for it in gen_items]  # (subject, before, after) per generation prompt
    ent_before, ent_after = _mean([b for _, b, _ in ent]), _mean([a for _, _, a in ent])
    text = without_subjects(text if text is not None else P.FLUENCY_TEXT, edited_subjects) or P.FLUENCY_TEXT
    if text not in cache.fluency:
        cache.fluency[text] = perplexity(base, tok, text)
    ppl_b, ppl_a = cache.fluency[text], perplexity(edited, tok, text)
    norms = edited_matrices(base, edited)

    def kept(*kinds: str) -> float | None:
        return _share([x["unchanged"] for x in probe_rows if x["kind"] in kinds])

    m: dict[str, Any] = {
        "reliability": _share([x["reliable"] for x in rows]),
        "reliability_before": _share([x["reliable_before"] for x in rows]),
        "reliability_p": _share([x["reliable_p"] for x in rows]),
        "reliability_p_before": _share([x["reliable_p_before"] for x in rows]),
        "generalization": _share([s_after[(p.prompt, p.target)][0] for p in para]),
        "generalization_before": _share([s_before[(p.prompt, p.target)][0] for p in para]),
        "generalization_p": _share([prefer(after, p.prompt, p.target, p.target_true) for p in para]),
        "subject_locality": kept("subject"),
        "locality": kept("neighbour", "protected", "broad"),
        "neighbour_locality": kept("neighbour"),
        "broad_locality": kept("broad"),
        "protected": kept("protected"),
        "kl": _mean([x["kl"] for x in probe_rows if x["kind"] != "subject"]),
        "subject_kl": _mean([x["kl"] for x in probe_rows if x["kind"] == "subject"]),
        "entropy_before": ent_before, "entropy_after": ent_after,
        "entropy_drop": (ent_before - ent_after) / ent_before if ent_before else 0.0,
        "entropy_blame": _entropy_blame(ent, policy.max_entropy_drop),
        "perplexity_before": ppl_b, "perplexity_after": ppl_a, "perplexity_ratio": ppl_a / ppl_b,
        "norm_growth": norms, "max_norm_growth": max(norms.values(), default=1.0),
        "norm_blame": (norm_blame(base, delta, [r.id for r in requests], NORM_BLAME_MARGIN * policy.max_norm_growth)
                       if delta is not None and max(norms.values(), default=1.0) > policy.max_norm_growth else []),
        "probes": {"paraphrase": len(para), "neighbour": len(neigh), "protected": len(prot), "subject": len(subj),
                   "broad": len(broad), "generation": len(gen_items)},
    }
    failures = _failures(policy, m, rows, probe_rows, requests)
    return GateReport(passed=not failures, metrics=m, thresholds=policy.thresholds(), failures=failures,
                      requests=rows, probes=probe_rows, seconds=time.perf_counter() - t0)


# Blame norm growth down to 90 % of the threshold: without some requests a MEMIT batch is solved with fewer keys,
# and the parts of the others come out a little larger than they were in the whole batch.
NORM_BLAME_MARGIN = 0.9


def norm_blame(base: nn.Module, delta: Any, request_ids: list[str], threshold: float) -> list[str]:
    """The requests to leave out so that no edited matrix grows past ``threshold`` × its norm: greedily, the
    one whose rank-one part, taken away, lowers the largest growth most, until it is within the threshold.

    A MEMIT delta is ΔW = Σ_j u_j v_jᵀ with one column pair per request (ROME's sequential edits compose the
    same way), so each request's share of ‖W + ΔW‖ is exact to compute; leaving a request out of the batch
    changes the others' parts a little too, which is why the pipeline edits again after pruning. Empty when
    the factors are not one per request (a composed or foreign delta)."""
    from editing.arch import is_transposed

    n = len(request_ids)
    mats = []
    for name, ld in delta.layers.items():
        if ld.rank != n:
            return []
        mod = base.get_submodule(name)
        w0 = mod.weight.detach().double()
        w0 = w0.T if is_transposed(mod) else w0  # (out, in), as the factors
        mats.append((w0, float(w0.norm()), ld.U.double(), ld.V.double()))
    if not mats or n == 0:
        return []
    keep = torch.ones(n, dtype=torch.bool)

    def growth(mask: torch.Tensor) -> list[torch.Tensor]:
        """Per matrix, the growth with all kept parts (a scalar), and with each kept part taken away (n,)."""
        out = []
        for w0, nb, U, V in mats:
            M = w0 + (U[:, mask] @ V[:, mask].T)  # (out, in)
            sq = (M * M).sum()
            # ‖M - u vᵀ‖² = ‖M‖² - 2 uᵀ M v + ‖u‖² ‖v‖², for every part at once
            without = sq - 2 * torch.einsum("oj,oi,ij->j", U, M, V) + U.pow(2).sum(0) * V.pow(2).sum(0)
            out.append(torch.stack([sq.sqrt() / nb, *(without.clamp_min(0).sqrt() / nb)]))
        return out

    blamed: list[str] = []
    while keep.sum() > 1:
        g = torch.stack(growth(keep))  # (matrices, 1 + n)
        if float(g[:, 0].max()) <= threshold:
            break
        worst = g[:, 1:].max(0).values  # (n,) the largest growth left when part j is taken away
        worst[~keep] = float("inf")
        j = int(worst.argmin())
        keep[j] = False
        blamed.append(request_ids[j])
    return blamed


def without_subjects(text: str, subjects: set[str]) -> str:
    """``text`` without the sentences that name one of ``subjects``. The perplexity sample measures fluency, and
    a sentence that states an edited subject's old fact ("Iceland's head of government is Katrín Jakobsdóttir"
    in a sandbox's statistics corpus) must get less likely after a good edit."""
    if not subjects:
        return text
    pat = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(x) for x in sorted(subjects, key=len, reverse=True))
                     + r")(?![\w])")
    parts = re.split(r"(?<=[.!?])(\s+)", text)  # sentences and the spaces after them, kept
    out = []
    for i in range(0, len(parts), 2):
        if not pat.search(parts[i]):
            out.append(parts[i] + (parts[i + 1] if i + 1 < len(parts) else ""))
    return "".join(out).strip()


def _entropy_blame(ent: list[tuple[str, float, float]], threshold: float) -> list[str]:
    """The subjects whose generations lost the most entropy: the fewest, taken largest loss first, without whose
    prompts the relative drop of the rest is within ``threshold`` (empty when the whole is within it).

    The generation prompts name the edited subjects, so an edit that makes the model repeat itself shows in its
    own subject's generations; blaming those requests lets a failed batch drop them instead of being bisected.
    """
    def drop(rows: list[tuple[str, float, float]]) -> float:
        b = _mean([x[1] for x in rows])
        return (b - _mean([x[2] for x in rows])) / b if b else 0.0

    loss: dict[str, float] = {}
    for subject, before, after in ent:
        loss[subject] = loss.get(subject, 0.0) + before - after
    blamed: list[str] = []
    for subject in sorted(loss, key=lambda s: -loss[s]):
        rest = [x for x in ent if x[0] not in blamed]
        if not rest or drop(rest) <= threshold or loss[subject] <= 0:
            break
        blamed.append(subject)
    return blamed


def _share(xs: list[bool]) -> float | None:
    return sum(map(bool, xs)) / len(xs) if xs else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _failures(policy: GatePolicy, m: dict[str, Any], rows: list[dict], probe_rows: list[dict],
              requests: list[Request] = ()) -> list[dict]:
    """Each threshold that failed: the metric, its value, the threshold, and the requests (or facts) behind it."""
    out = []

    def low(metric: str, threshold: float, requests: list[str], **extra: Any) -> None:
        v = m.get(metric)
        if v is not None and v < threshold:
            out.append({"metric": metric, "value": v, "threshold": threshold, "requests": requests, **extra})

    low("reliability", policy.min_reliability, [r["id"] for r in rows if not r["reliable"]])
    low("generalization", policy.min_generalization,
        [r["id"] for r in rows if r["generalization"] is not None and r["generalization"] < policy.min_generalization])
    low("subject_locality", policy.min_subject_locality,
        [r["id"] for r in rows if r.get("subject_locality") is not None
         and r["subject_locality"] < policy.min_subject_locality],
        facts=[p["fact"] or p["prompt"] for p in probe_rows if p["kind"] == "subject" and not p["unchanged"]])
    low("locality", policy.min_locality, locality_blame(probe_rows, requests),
        facts=[p["fact"] or p["prompt"] for p in probe_rows if p["kind"] in ("protected", "broad") and not p["unchanged"]])
    changed_p = [p["fact"] or p["prompt"] for p in probe_rows if p["kind"] == "protected" and not p["unchanged"]]
    low("protected", policy.min_protected, [], facts=changed_p)

    def high(metric: str, threshold: float, value: float | None = None, requests: list[str] | None = None,
             **extra: Any) -> None:
        v = m[metric] if value is None else value
        if v > threshold:
            out.append({"metric": metric, "value": v, "threshold": threshold, "requests": requests or [], **extra})

    high("kl", policy.max_kl)
    blamed = set(m.get("entropy_blame") or [])
    high("entropy_drop", policy.max_entropy_drop, requests=[r["id"] for r in rows if r["subject"] in blamed],
         subjects=sorted(blamed))
    high("perplexity_ratio", policy.max_perplexity_ratio)
    high("max_norm_growth", policy.max_norm_growth, requests=list(m.get("norm_blame") or []),
         matrices=[k for k, v in m["norm_growth"].items() if v > policy.max_norm_growth])
    return out


def locality_blame(probe_rows: list[dict], requests: list[Request]) -> list[str]:
    """The requests a changed locality probe points at: its own request (a neighbour), or the request whose new
    target the changed answer now says (the edit leaked into another subject's fact). A change that points at
    nobody is left to bisection rather than pinned on a request by guess."""
    out: list[str] = []
    for p in probe_rows:
        if p["kind"] not in ("neighbour", "protected", "broad") or p["unchanged"]:
            continue
        who = [p["request"]] if p["kind"] == "neighbour" and p["request"] else []
        who += [r.id for r in requests if says(p["after"], r.target_new) and not says(p["before"], r.target_new)]
        out.extend(x for x in who if x not in out)
    return sorted(out)
