"""Which requests a failed gate metric points at, and the list of failures the gate reports: a request is
blamed only where a probe ties the failure to it (its own neighbour, its subject, its new target said where it
should not be, its share of a matrix's norm growth); the rest is left to bisection."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .answers import says
from .measures import mean
from .policy import GatePolicy
from ..requests import Request


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


def entropy_blame(ent: list[tuple[str, float, float]], threshold: float) -> list[str]:
    """The subjects whose generations lost the most entropy: the fewest, taken largest loss first, without whose
    prompts the relative drop of the rest is within ``threshold`` (empty when the whole is within it).

    The generation prompts name the edited subjects, so an edit that makes the model repeat itself shows in its
    own subject's generations; blaming those requests lets a failed batch drop them instead of being bisected.
    """
    def drop(rows: list[tuple[str, float, float]]) -> float:
        b = mean([x[1] for x in rows])
        return (b - mean([x[2] for x in rows])) / b if b else 0.0

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


def failed_thresholds(policy: GatePolicy, m: dict[str, Any], rows: list[dict], probe_rows: list[dict],
              requests: list[Request] = ()) -> list[dict]:
    """Each threshold that failed: the metric, its value, the threshold, and the requests (or facts) behind it."""
    out = []

    def low(metric: str, threshold: float, requests: list[str], **extra: Any) -> None:
        v = m.get(metric)
        if v is not None and v < threshold:
            if metric in ("generalization", "subject_locality", "subject_facts", "namesake_locality"):  # their own
                extra["values"] = {r["id"]: r[metric] for r in rows if r["id"] in requests}
            out.append({"metric": metric, "value": v, "threshold": threshold, "requests": requests, **extra})

    def each(metric: str, threshold: float, **extra: Any) -> None:
        """``policy.per_request``: a batch whose share passes still fails where a request's own share does not
        (a request not said, or its subject's other facts moved): the share of a batch of 44 passes with two
        requests unsaid, and registering them would call them applied."""
        if not policy.per_request or any(f["metric"] == metric for f in out):
            return
        own = {r["id"]: (float(r["reliable"]) if metric == "reliability" else r.get(metric)) for r in rows}
        bad = [i for i, v in own.items() if v is not None and v < threshold]
        if bad:
            out.append({"metric": metric, "value": min(own[i] for i in bad), "threshold": threshold,
                        "requests": bad, "scope": "request", "values": {i: own[i] for i in bad}, **extra})

    low("reliability", policy.min_reliability, [r["id"] for r in rows if not r["reliable"]])
    each("reliability", policy.min_reliability)
    low("generalization", policy.min_generalization,
        [r["id"] for r in rows if r["generalization"] is not None and r["generalization"] < policy.min_generalization])
    each("generalization", policy.min_generalization)
    subject_changed = list(dict.fromkeys(p["fact"] or p["prompt"] for p in probe_rows
                                         if p["kind"] == "subject" and not p["unchanged"]))
    low("subject_locality", policy.min_subject_locality,
        [r["id"] for r in rows if r.get("subject_locality") is not None
         and r["subject_locality"] < policy.min_subject_locality], facts=subject_changed)
    each("subject_locality", policy.min_subject_locality, facts=subject_changed)
    known_changed = list(dict.fromkeys(p["fact"] or p["prompt"] for p in probe_rows
                                       if p["kind"] == "subject" and p["expected"] and not p["unchanged"]))
    low("subject_facts", policy.min_subject_facts,
        [r["id"] for r in rows if r.get("subject_facts") is not None and r["subject_facts"] < policy.min_subject_facts],
        facts=known_changed)
    each("subject_facts", policy.min_subject_facts, facts=known_changed)
    namesake_changed = list(dict.fromkeys(p["fact"] or p["prompt"] for p in probe_rows
                                          if p["kind"] == "namesake" and not p["unchanged"]))
    low("namesake_locality", policy.min_namesake_locality,
        [r["id"] for r in rows if r.get("namesake_locality") is not None
         and r["namesake_locality"] < policy.min_namesake_locality], facts=namesake_changed)
    each("namesake_locality", policy.min_namesake_locality, facts=namesake_changed)
    low("locality", policy.min_locality, locality_blame(probe_rows, requests),
        facts=[p["fact"] or p["prompt"] for p in probe_rows if p["kind"] in ("protected", "broad") and not p["unchanged"]])
    low("retention", policy.min_retention, retention_blame(probe_rows, requests),
        facts=[p["request"] for p in probe_rows if p["kind"] == "earlier" and not p["unchanged"]])
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


def retention_blame(probe_rows: list[dict], requests: list[Request]) -> list[str]:
    """The requests a lost earlier edit points at: those about its subject (the new edit rewrote the key the
    earlier one lives on), and those whose new target its prompt now says. Else bisection finds them."""
    out: list[str] = []
    for p in probe_rows:
        if p["kind"] != "earlier" or p["unchanged"]:
            continue
        who = [r.id for r in requests if r.subject == p["subject"]]
        who += [r.id for r in requests if says(p["after"], r.target_new) and not says(p["before"], r.target_new)]
        out.extend(x for x in who if x not in out)
    return sorted(out)
