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
prompt would have the same key and contradict each other; they are refused up front.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import delta as D
from .arch import spec_for
from .hparams import MemitHparams
from .requests import EditRequest, check_distinct
from .targets import keys, optimize_targets, outputs_at_subject

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
    # per request, the share of its target residual z − h the update realises: ((z_edited − h) · (z − h)) / ‖z − h‖²
    # at the last edited layer's output, the subject's last token of the bare prompt (1.0: all of it)
    realized: list[float] = field(default_factory=list)
    realize_rounds: int = 0  # extra solves that raised the targets of requests realised below min_realized


def compute(model: nn.Module, tokenizer, requests: list[EditRequest], hp: MemitHparams, templates: list[str],
            covs: dict[int, torch.Tensor], progress: Callable[[str], None] | None = None) -> tuple[D.Delta, MemitTimes]:
    """The delta of editing ``requests`` as one MEMIT batch. The model is unchanged on return."""
    check_distinct(requests)
    spec = spec_for(model)
    z_name = spec.layer(hp.z_layer)
    times = MemitTimes()
    t0 = time.perf_counter()
    if hp.batched_targets:
        tg = optimize_targets(model, tokenizer, z_name, requests, templates, hp.target)
        delta_z, init = tg.delta, tg.init
        times.target_steps, times.target_nll = tg.steps, tg.nll
    else:  # the reference's loop over edits, kept to measure the batched optimisation against
        parts = [optimize_targets(model, tokenizer, z_name, [r], templates, hp.target) for r in requests]
        delta_z = torch.cat([p.delta for p in parts])
        init = torch.cat([p.init for p in parts])
        times.target_steps = [p.steps[0] for p in parts]
        times.target_nll = [p.nll[0] for p in parts]
    z = (init + delta_z).cpu()  # (n, d) target residual-stream vectors at layer L
    times.targets = time.perf_counter() - t0
    if progress:
        progress("targets")

    init = init.cpu()
    want = z - init  # (n, d) the residual each request's target asks for
    z_t = z.clone()  # the targets the layers are solved for: z, raised where a round fell short
    for round_ in range(hp.realize_rounds + 1):
        layers: dict[str, D.LayerDelta] = {}
        applied: list[D.Applied] = []
        try:
            for i, layer in enumerate(hp.layers):
                name = spec.mlp_out_at(layer)
                t1 = time.perf_counter()
                K = keys(model, tokenizer, name, requests, templates).T.cpu()  # (d_k, n)
                z_now = outputs_at_subject(model, tokenizer, z_name, requests).cpu()  # (n, d)
                t2 = time.perf_counter()
                resid = (z_t - z_now).T / (len(hp.layers) - i)  # (d, n) this layer's share
                ld = layer_update(resid, K, covs[layer], hp.mom2_update_weight, hp.ridge)
                t3 = time.perf_counter()
                layers[name] = ld
                applied.append(D.apply(model, D.Delta({name: ld})))  # later layers see this update
                times.keys += t2 - t1
                times.solve += t3 - t2
                if progress:
                    progress(f"layer {layer}")
            z_end = outputs_at_subject(model, tokenizer, z_name, requests).cpu()  # (n, d) with every update
        finally:
            for a in reversed(applied):
                a.revert()
        realized = ((z_end - init) * want).sum(-1) / want.pow(2).sum(-1).clamp_min(1e-12)  # (n,)
        times.realized = realized.tolist()
        short = realized < hp.min_realized
        if round_ == hp.realize_rounds or not bool(short.any()):
            break
        # λC keeps the update small on ordinary keys, and a batch shares one matrix: a request gets a fraction
        # of its residual. Ask the solve for proportionally more (at most 2x per round) where it fell short.
        gain = torch.where(short, 1.0 / realized.clamp(min=0.5), torch.ones_like(realized))  # (n,)
        z_t = init + (z_t - init) * gain[:, None]
        times.realize_rounds = round_ + 1
    return D.Delta(layers), times
