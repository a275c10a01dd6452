"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): a batch spread over several layers.

1. Target vectors z_i = h_i + δ_i at the output of the last edited layer L (the residual stream at the
   subject's last token), all optimised together (:func:`editing.targets.optimize_targets`).
2. For each edited layer l = l_1 … L in order, on the model with the earlier layers' updates applied:
   K (d_k, n) the requests' keys (averaged over context prefixes), R = (z − z_now) / (layers left) the
   residual this layer takes its share of, and

       ΔW_l = R Kᵀ (λ C_l + K Kᵀ)⁻¹             solved in float64,

   the least-squares update that maps the new keys to their share of the residual while keeping W_l's
   outputs on ordinary keys (weighted by λ C_l, C_l = E[k kᵀ]). Stored low-rank: U = R (d, n),
   V = (λ C + K Kᵀ)⁻¹ K (d_k, n).

The model is restored bit-for-bit before :func:`compute` returns. Two requests with the same subject and
prompt would have the same key and contradict each other; the engine refuses them up front
(``Method.distinct_keys``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ... import delta as D
from ...arch import spec_for
from ...requests import EditRequest
from ...targets import keys, optimize_targets, outputs_at_subject, target_leads
from ..base import Inputs, Output
from . import MemitHparams

log = logging.getLogger(__name__)


def layer_update(resid: torch.Tensor, K: torch.Tensor, cov: torch.Tensor, lam: float,
                 ridge: float = 0.0) -> D.LayerDelta:
    """ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹ as factors U = R (d, n), V = (λ C + K Kᵀ)⁻¹ K (d_k, n); float64 solve.

    resid: (d, n), K: (d_k, n), cov: (d_k, d_k). ``ridge`` adds ridge · tr(C)/d to C's diagonal: a key with a
    component where the corpus has almost no variance (a subject the corpus rarely names) would otherwise
    see C⁻¹ blow that component up, and the update reach every other key that shares the direction.
    """
    Kd = K.double()
    C = cov.double()
    if ridge:
        C = C + ridge * (torch.trace(C) / C.shape[0]) * torch.eye(C.shape[0], dtype=C.dtype)
    A = lam * C + Kd @ Kd.T  # (d_k, d_k), symmetric positive definite when C is
    # A unit that was exactly 0 for every statistics token and every request (a dead GELU: its output
    # underflows to 0) gives a zero row and column: no key has a component there, so any value on the
    # diagonal leaves ΔW unchanged. 1 makes the system solvable.
    dead = A.diagonal() == 0
    if dead.any():
        log.debug("%d key units are 0 for every statistics token and request", int(dead.sum()))
        A = A + torch.diag(dead.double())
    V = torch.linalg.solve(A, Kd)  # (d_k, n)
    return D.LayerDelta(resid.double().float(), V.float())


@dataclass
class MemitTimes:
    targets: float = 0.0
    keys: float = 0.0
    solve: float = 0.0
    target_steps: list[int] = field(default_factory=list)
    target_nll: list[float] = field(default_factory=list)
    target_step_seconds: list[float] = field(default_factory=list)  # the batched optimisation's steps, in order
    # per request, the share of its target residual z − h the update realises: ((z_edited − h) · (z − h)) / ‖z − h‖²
    # at the last edited layer's output, the subject's last token of the bare prompt (1.0: all of it)
    realized: list[float] = field(default_factory=list)
    leads: list[float] = field(default_factory=list)  # per request, with min_lead > 0: editing.targets.target_leads
    target_chunks: int = 1  # request chunks the targets were optimised in (a batch larger than memory)
    realize_rounds: int = 0  # extra solves that raised the targets of requests realised below min_realized
    sub_batches: int = 1  # batches the requests were finally edited in (split_depth: halves of short batches)
    init: torch.Tensor | None = field(default=None, repr=False)  # (n, d) h at the subject's last token
    want: torch.Tensor | None = field(default=None, repr=False)  # (n, d) z − h, the residual each target asks for


# solve_layer(layer, resid (d, n), K (d_k, n)) -> the layer's update; MEMIT's is :func:`layer_update` with λC.
# The update is U Vᵀ with U = resid and V a function of K alone (MEMIT's and AlphaEdit's both are): a round of
# raised targets whose keys have not changed reuses V, and only U moves.
SolveLayer = Callable[[int, torch.Tensor, torch.Tensor], D.LayerDelta]


def compute(model: nn.Module, tokenizer, requests: list[EditRequest], hp: MemitHparams, templates: list[str],
            covs: dict[int, torch.Tensor], progress: Callable[[str], None] | None = None,
            solve_layer: SolveLayer | None = None) -> tuple[D.Delta, MemitTimes]:
    """The delta of editing ``requests`` as MEMIT batches. The model is unchanged on return.

    ``solve_layer`` replaces MEMIT's per-layer solve (AlphaEdit projects it); targets, keys, the residual's
    spread over the layers and the raised-target rounds stay MEMIT's.

    One batch first. When some requests are still realised below ``hp.min_realized`` after the raised-target
    rounds, and ``hp.split_depth`` allows, the batch is split in two halves (a subject's requests stay together)
    edited one after the other: the second half's targets, keys and solve see the first half's update, and the
    returned delta is the two composed. Each half may split again, down to ``split_depth`` levels."""
    if solve_layer is None:
        def solve_layer(layer: int, resid: torch.Tensor, K: torch.Tensor) -> D.LayerDelta:
            return layer_update(resid, K, covs[layer], hp.mom2_update_weight, hp.ridge)
    delta, times = _compute(model, tokenizer, requests, hp, templates, solve_layer, progress, hp.split_depth)
    if times.sub_batches > 1:  # a later sub-batch may undo part of an earlier one: measure on the whole delta
        applied = D.apply(model, delta)
        try:
            z_end = outputs_at_subject(model, tokenizer, spec_for(model).layer(hp.z_layer), requests).cpu()
        finally:
            applied.revert()
        times.realized = _realized(z_end, times.init, times.want).tolist()
    return delta, times


def _realized(z_end: torch.Tensor, init: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """(n,) the share of each target residual ``want`` that ``z_end`` − ``init`` realises."""
    return ((z_end - init) * want).sum(-1) / want.pow(2).sum(-1).clamp_min(1e-12)


def _halves(requests: list[EditRequest]) -> tuple[list[int], list[int]] | None:
    """Indices of two halves of ``requests`` with no subject in both, or None for a single subject."""
    subjects = list(dict.fromkeys(r.subject for r in requests))
    if len(subjects) < 2:
        return None
    first = set(subjects[:len(subjects) // 2])
    a = [i for i, r in enumerate(requests) if r.subject in first]
    return a, [i for i, r in enumerate(requests) if r.subject not in first]


def _compute(model: nn.Module, tokenizer, requests: list[EditRequest], hp: MemitHparams, templates: list[str],
             solve_layer: SolveLayer, progress: Callable[[str], None] | None, depth: int
             ) -> tuple[D.Delta, MemitTimes]:
    delta, times = _solve_batch(model, tokenizer, requests, hp, templates, solve_layer, progress)
    halves = _halves(requests)
    if depth <= 0 or halves is None or min(times.realized) >= hp.min_realized:
        return delta, times
    log.info("%d of %d requests realised below %.2f: splitting the batch in two", sum(
        x < hp.min_realized for x in times.realized), len(requests), hp.min_realized)
    parts: list[tuple[list[int], D.Delta, MemitTimes]] = []
    applied: list[D.Applied] = []
    try:
        for idx in halves:
            d, t = _compute(model, tokenizer, [requests[i] for i in idx], hp, templates, solve_layer, progress,
                            depth - 1)
            parts.append((idx, d, t))
            applied.append(D.apply(model, d))  # the second half is edited on the first half's model
    finally:
        for a in reversed(applied):
            a.revert()
    out = MemitTimes(targets=times.targets, keys=times.keys, solve=times.solve,
                     target_steps=[0] * len(requests), target_nll=[0.0] * len(requests),
                     target_step_seconds=times.target_step_seconds, realized=[0.0] * len(requests), realize_rounds=times.realize_rounds, sub_batches=0,
                     init=torch.zeros_like(times.init), want=torch.zeros_like(times.want))
    for idx, _, t in parts:
        out.targets += t.targets
        out.keys += t.keys
        out.solve += t.solve
        out.realize_rounds = max(out.realize_rounds, t.realize_rounds)
        out.sub_batches += t.sub_batches
        for j, i in enumerate(idx):
            out.target_steps[i], out.target_nll[i], out.realized[i] = t.target_steps[j], t.target_nll[j], t.realized[j]
            out.init[i], out.want[i] = t.init[j], t.want[j]  # the second half's h is read on the first's update
    if all(t.leads for _, _, t in parts):
        out.leads = [0.0] * len(requests)
        for idx, _, t in parts:
            for j, i in enumerate(idx):
                out.leads[i] = t.leads[j]
    (_, first, _), (_, second, _) = parts
    return first.compose(second), out


def _solve_batch(model: nn.Module, tokenizer, requests: list[EditRequest], hp: MemitHparams, templates: list[str],
                 solve_layer: SolveLayer, progress: Callable[[str], None] | None) -> tuple[D.Delta, MemitTimes]:
    """One MEMIT batch: targets, then the layers solved (again, with raised targets, up to realize_rounds)."""
    spec = spec_for(model)
    z_name = spec.layer(hp.z_layer)
    times = MemitTimes()
    t0 = time.perf_counter()
    if hp.batched_targets:
        # a batch larger than memory is optimised in chunks: "targets 300/1000" after each
        tg = optimize_targets(model, tokenizer, z_name, requests, templates, hp.target,
                              progress=(lambda a, b: progress(f"targets {a}/{b}")) if progress else None)
        delta_z, init = tg.delta, tg.init
        times.target_steps, times.target_nll, times.target_step_seconds = tg.steps, tg.nll, tg.step_seconds
        times.target_chunks = tg.chunks
    else:  # the reference's loop over edits, kept to measure the batched optimisation against
        parts = [optimize_targets(model, tokenizer, z_name, [r], templates, hp.target) for r in requests]
        delta_z = torch.cat([p.delta for p in parts])
        init = torch.cat([p.init for p in parts])
        times.target_steps = [p.steps[0] for p in parts]
        times.target_nll = [p.nll[0] for p in parts]
        # step k of the loop: every request's step k, summed (what one batched step does for all of them)
        times.target_step_seconds = [sum(p.step_seconds[k] for p in parts if k < len(p.step_seconds))
                                     for k in range(max(len(p.step_seconds) for p in parts))]
    z = (init + delta_z).cpu()  # (n, d) target residual-stream vectors at layer L
    times.targets = time.perf_counter() - t0
    if progress:
        progress("targets")

    init = init.cpu()
    want = z - init  # (n, d) the residual each request's target asks for
    z_t = z.clone()  # the targets the layers are solved for: z, raised where a round fell short
    factor = torch.ones(len(requests))  # (n,) z_t − init = want · factor
    # The first layer's keys are read on the model as it was before the batch in every round (each round's
    # updates are reverted), so its K, and the solve's V, are those of round 0: a raised-target round solves
    # only the layers above it (a d_k x d_k float64 solve per layer and round: 16,384 wide on GPT-J).
    first: tuple[torch.Tensor, torch.Tensor] | None = None  # (K, V) of hp.layers[0]
    for round_ in range(hp.realize_rounds + 1):
        layers: dict[str, D.LayerDelta] = {}
        applied: list[D.Applied] = []
        try:
            for i, layer in enumerate(hp.layers):
                name = spec.mlp_out_at(layer)
                t1 = time.perf_counter()
                if i == 0 and first is not None:
                    K = first[0]
                else:
                    K = keys(model, tokenizer, name, requests, templates).T.cpu()  # (d_k, n)
                z_now = outputs_at_subject(model, tokenizer, z_name, requests).cpu()  # (n, d)
                t2 = time.perf_counter()
                resid = (z_t - z_now).T / (len(hp.layers) - i)  # (d, n) this layer's share
                if i == 0 and first is not None:
                    ld = D.LayerDelta(resid.double().float(), first[1])
                else:
                    ld = solve_layer(layer, resid, K)
                    if i == 0:
                        first = (K, ld.V)
                t3 = time.perf_counter()
                layers[name] = ld
                applied.append(D.apply(model, D.Delta({name: ld})))  # later layers see this update
                times.keys += t2 - t1
                times.solve += t3 - t2
                if progress:
                    progress(f"layer {layer}")
            z_end = outputs_at_subject(model, tokenizer, z_name, requests).cpu()  # (n, d) with every update
            # (n,) how far each new target leads on its own prompt with every update applied
            leads = target_leads(model, tokenizer, requests) if hp.min_lead > 0 else None
        finally:
            for a in reversed(applied):
                a.revert()
        realized = _realized(z_end, init, want)  # (n,)
        times.realized = realized.tolist()
        short = realized < hp.min_realized
        # said, but by a hair (one not said at all is the batch's to give up on: raising it wrecks what its keys share)
        thin = (leads > 0) & (leads < hp.min_lead) if leads is not None else torch.zeros_like(short)
        if leads is not None:
            times.leads = leads.tolist()
        if round_ == hp.realize_rounds or not bool((short | thin).any()):
            break
        # λC keeps the update small on ordinary keys, and a batch shares one matrix: a request gets a fraction
        # of its residual. Ask the solve for proportionally more where it fell short: at most 2x per round and
        # max_target_gain in all; a request already at the cap stays there (a split, if allowed, comes next).
        # One realised but said by a hair (its lead below min_lead) asks for half again as much.
        factor_next = torch.where(short, factor / realized.clamp(min=0.5), factor)
        factor_next = torch.where(thin & ~short, factor * 1.5, factor_next).clamp(max=hp.max_target_gain)
        if bool((factor_next <= factor).all()):
            break
        factor = factor_next
        z_t = init + want * factor[:, None]
        times.realize_rounds = round_ + 1
    times.init, times.want = init, want
    return D.Delta(layers), times


def run(x: Inputs) -> Output:
    delta, tm = compute(x.model, x.tokenizer, x.requests, x.hp, x.templates, x.covs,
                        progress=lambda what: x.emit("solve", {"step": what}))
    return Output(delta, {"keys": tm.keys, "targets": tm.targets, "solve": tm.solve},
                  {"target_steps": tm.target_steps, "target_nll": tm.target_nll, "realized": tm.realized,
                   "leads": tm.leads,
                   "target_step_seconds": tm.target_step_seconds, "target_chunks": tm.target_chunks,
                   "realize_rounds": tm.realize_rounds, "sub_batches": tm.sub_batches})
