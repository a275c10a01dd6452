"""The release gate: does an edited model do what its requests asked, and nothing else?

    policy = load_policy(path)            # or GatePolicy() for the defaults
    report = run_gate(base, edited, tokenizer, requests, policy, protected=facts, pool=model_facts(dir))
    report.passed, report.failures        # which threshold failed, and for which requests

Metrics, base model vs edited model (multi-token targets scored by whole-sequence log-probability):

* **reliability** -- share of requests with p(target_new) > p(target_true) on the request's prompt
  (``reliability_greedy``: greedy decoding starts with target_new); a request without target_true counts
  by its greedy answer;
* **generalization** -- the same on paraphrases (the request's own, else the relation catalogue's);
* **locality** -- share of neighbour and protected prompts whose greedy answer is unchanged, and the mean
  KL(base || edited) of the next-token distribution on them; ``protected`` is the share for the protected
  facts alone;
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
from .requests import Request


class PolicyError(ValueError):
    """A gate policy file is wrong (the message names the key)."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate and the size of its probe suites (YAML keys = field names)."""

    min_reliability: float = 0.9  # share of requests with p_new > p_true on their prompt
    min_generalization: float = 0.6  # share of paraphrase probes with p_new > p_true
    min_locality: float = 0.9  # share of neighbour + protected prompts whose greedy answer is unchanged
    min_protected: float = 1.0  # share of protected facts whose greedy answer is unchanged
    max_kl: float = 0.5  # mean KL(base || edited), nats, of the next token on neighbour + protected prompts
    max_entropy_drop: float = 0.1  # relative drop of the n-gram entropy of greedy generations
    max_perplexity_ratio: float = 1.25  # perplexity on the fixed text sample, edited / base
    # ‖W_edited‖ / ‖W_base‖ of each edited matrix: an early warning, since growing norms precede the collapse of
    # sequentially edited models (Gupta et al. 2024); MEMIT's 3 edits on the tiny sandbox grow c_proj 1.9x
    max_norm_growth: float = 3.0
    paraphrases: int = 3  # catalogue paraphrases per request (when it brings none)
    neighbours: int = 5  # sampled neighbours per request (when it brings none), base-correct only
    generation_tokens: int = 24  # greedy tokens per fluency generation
    seed: int = 0  # neighbour sampling

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except HparamsError as e:
            raise PolicyError(str(e)) from None
        for name in ("min_reliability", "min_generalization", "min_locality", "min_protected"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PolicyError(f"'{name}': expected a share in [0, 1], found {getattr(self, name)}")
        for name in ("max_kl", "max_entropy_drop", "max_perplexity_ratio", "max_norm_growth"):
            if getattr(self, name) < 0:
                raise PolicyError(f"'{name}': expected a value >= 0, found {getattr(self, name)}")
        for name in ("paraphrases", "neighbours", "generation_tokens"):
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


def run_gate(base: nn.Module, edited: nn.Module, tok, requests: list[Request], policy: GatePolicy | None = None,
             protected: list[P.Fact] | None = None, pool: list[P.Fact] | None = None, text: str | None = None,
             cache: BaseCache | None = None, delta: Any = None) -> GateReport:
    """Gate ``edited`` against ``base`` for ``requests`` (see the module docstring). ``delta`` (the edit's
    :class:`editing.delta.Delta`, one rank-one part per request in order) lets a failed norm growth name the
    requests behind it (:func:`norm_blame`)."""
    t0 = time.perf_counter()
    policy = policy or GatePolicy()
    protected = list(protected or [])
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
            pool_all = list(pool or []) + protected
            cand.extend((r, f) for f in P.neighbour_candidates(r, pool_all, edited_subjects, 3 * policy.neighbours,
                                                                policy.seed))
    if cand:  # sampled neighbours: only facts the base model answers correctly
        sc = _score_many(base, tok, [(f.prompt, f.target) for _, f in cand], cache.scores)
        taken: Counter = Counter()
        for r, f in cand:
            if sc[(f.prompt, f.target)].argmax and taken[r.id] < policy.neighbours:
                taken[r.id] += 1
                neigh.append(Probe("neighbour", r.id, f.prompt, f.target, fact_id=f.id))
    # every protected fact, even one whose subject an edit touches: that is what protection means
    prot = [Probe("protected", None, f.prompt, f.target, fact_id=f.id) for f in protected]

    # ---- reliability and generalization: p_new > p_true, and greedy
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

    def success(scores, prompt: str, new: str, true: str | None) -> tuple[bool, bool]:
        s_new = scores[(prompt, new)]
        ok = _prefer_new(s_new, scores[(prompt, true)]) if true else s_new.argmax
        return ok, s_new.argmax

    # ---- locality: greedy answers and next-token KL, base vs edited
    loc = neigh + prot
    items = [(p.prompt, _answer_tokens(tok, p.prompt, p.target)) for p in loc]
    g_after = _greedy_many(edited, tok, items, None)
    g_before = _greedy_many(base, tok, items, cache.greedy)
    probe_rows = []
    kls = []
    for p, it in zip(loc, items):
        (a_ids, a_lp), (b_ids, b_lp) = g_after[it], g_before[it]
        kl = float(torch.sum(b_lp.exp() * (b_lp - a_lp)))
        kls.append(kl)
        probe_rows.append({"kind": p.kind, "request": p.request_id, "fact": p.fact_id, "prompt": p.prompt,
                           "expected": p.target, "before": tok.decode(b_ids), "after": tok.decode(a_ids),
                           "unchanged": a_ids == b_ids, "kl": round(kl, 6)})

    # ---- per request
    rows = []
    for r in requests:
        ok_a, greedy_a = success(after, r.text, r.target_new, r.target_true)
        ok_b, greedy_b = success(before, r.text, r.target_new, r.target_true)
        mine = [p for p in para if p.request_id == r.id]
        gen_a = [success(after, p.prompt, p.target, p.target_true) for p in mine]
        gen_b = [success(before, p.prompt, p.target, p.target_true) for p in mine]
        nb = [x for x in probe_rows if x["kind"] == "neighbour" and x["request"] == r.id]
        rows.append({
            "id": r.id, "subject": r.subject, "prompt": r.text, "target_new": r.target_new,
            "target_true": r.target_true,
            "p_new_before": before[(r.text, r.target_new)].prob, "p_new_after": after[(r.text, r.target_new)].prob,
            "p_true_before": before[(r.text, r.target_true)].prob if r.target_true else None,
            "p_true_after": after[(r.text, r.target_true)].prob if r.target_true else None,
            "reliable": ok_a, "reliable_before": ok_b, "greedy": greedy_a, "greedy_before": greedy_b,
            "generalization": _share([x[0] for x in gen_a]), "generalization_before": _share([x[0] for x in gen_b]),
            "paraphrases": len(mine), "locality": _share([x["unchanged"] for x in nb]), "neighbours": len(nb),
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

    m: dict[str, Any] = {
        "reliability": _share([x["reliable"] for x in rows]),
        "reliability_greedy": _share([x["greedy"] for x in rows]),
        "reliability_before": _share([x["reliable_before"] for x in rows]),
        "generalization": _share([success(after, p.prompt, p.target, p.target_true)[0] for p in para]),
        "generalization_greedy": _share([success(after, p.prompt, p.target, p.target_true)[1] for p in para]),
        "generalization_before": _share([success(before, p.prompt, p.target, p.target_true)[0] for p in para]),
        "locality": _share([x["unchanged"] for x in probe_rows]),
        "neighbour_locality": _share([x["unchanged"] for x in probe_rows if x["kind"] == "neighbour"]),
        "protected": _share([x["unchanged"] for x in probe_rows if x["kind"] == "protected"]),
        "kl": _mean(kls),
        "entropy_before": ent_before, "entropy_after": ent_after,
        "entropy_drop": (ent_before - ent_after) / ent_before if ent_before else 0.0,
        "entropy_blame": _entropy_blame(ent, policy.max_entropy_drop),
        "perplexity_before": ppl_b, "perplexity_after": ppl_a, "perplexity_ratio": ppl_a / ppl_b,
        "norm_growth": norms, "max_norm_growth": max(norms.values(), default=1.0),
        "norm_blame": (norm_blame(base, delta, [r.id for r in requests], NORM_BLAME_MARGIN * policy.max_norm_growth)
                       if delta is not None and max(norms.values(), default=1.0) > policy.max_norm_growth else []),
        "probes": {"paraphrase": len(para), "neighbour": len(neigh), "protected": len(prot),
                   "generation": len(gen_items)},
    }
    failures = _failures(policy, m, rows, probe_rows)
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


def _failures(policy: GatePolicy, m: dict[str, Any], rows: list[dict], probe_rows: list[dict]) -> list[dict]:
    """Each threshold that failed: the metric, its value, the threshold, and the requests (or facts) behind it."""
    out = []

    def low(metric: str, threshold: float, requests: list[str], **extra: Any) -> None:
        v = m[metric]
        if v is not None and v < threshold:
            out.append({"metric": metric, "value": v, "threshold": threshold, "requests": requests, **extra})

    low("reliability", policy.min_reliability, [r["id"] for r in rows if not r["reliable"]])
    low("generalization", policy.min_generalization,
        [r["id"] for r in rows if r["generalization"] is not None and r["generalization"] < policy.min_generalization])
    changed_n = sorted({p["request"] for p in probe_rows if p["kind"] == "neighbour" and not p["unchanged"]})
    changed_p = [p["fact"] or p["prompt"] for p in probe_rows if p["kind"] == "protected" and not p["unchanged"]]
    low("locality", policy.min_locality, changed_n, facts=changed_p)
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
