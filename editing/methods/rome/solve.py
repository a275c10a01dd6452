"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"): a rank-one update.

For one request at layer ℓ, with k̄ the subject's key averaged over context prefixes and δ the optimised
change of the MLP output at the subject's last token (:mod:`editing.targets`):

    ΔW = δ (C⁻¹ k̄)ᵀ / (k̄ᵀ C⁻¹ k̄)          so that  ΔW k̄ = δ,

the least change of W (in the C-weighted sense) that maps the key to its new value. The same averaged key
is used in the numerator and the denominator: the original code used a differently computed key in the
denominator, which the r-ROME paper (Gupta et al. 2024) showed to cause collapses. Several requests are
edited sequentially: each is computed on the model with the ones before it applied (temporarily — the
model is restored bit-for-bit before :func:`compute` returns).
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
from ...targets import keys, optimize_targets
from ..base import Inputs, Output
from . import RomeHparams

log = logging.getLogger(__name__)


def rank_one(delta_v: torch.Tensor, key: torch.Tensor, cov: torch.Tensor | None, ridge: float) -> D.LayerDelta:
    """ΔW = U Vᵀ with U = δ / (k̄ᵀ C⁻¹ k̄) (out, 1) and V = C⁻¹ k̄ (in, 1); solved in float64.

    delta_v: (d_out,), key: (d_in,), cov: (d_in, d_in) or None (then C = I: the plain least-norm update).
    """
    k = key.double()  # (d_in,)
    if cov is None:
        u = k
    else:
        c = cov.double()
        c = c + ridge * (torch.trace(c) / c.shape[0]) * torch.eye(c.shape[0], dtype=c.dtype)
        u = torch.linalg.solve(c, k)  # (d_in,) C⁻¹ k̄
    denom = torch.dot(k, u)
    U = (delta_v.double() / denom)[:, None]  # (d_out, 1)
    return D.LayerDelta(U.float(), u[:, None].float())


@dataclass
class RomeTimes:
    keys: float = 0.0
    targets: float = 0.0
    solve: float = 0.0
    per_request: list[dict] = field(default_factory=list)


def compute(model: nn.Module, tokenizer, requests: list[EditRequest], hp: RomeHparams, templates: list[str],
            cov: torch.Tensor | None, progress: Callable[[int, int], None] | None = None) -> tuple[D.Delta, RomeTimes]:
    """The delta of editing ``requests`` one after another with ROME. The model is unchanged on return."""
    spec = spec_for(model)
    name = spec.mlp_out_at(hp.layer)
    times = RomeTimes()
    layer_deltas: list[D.LayerDelta] = []
    applied: list[D.Applied] = []
    try:
        for i, req in enumerate(requests):
            t0 = time.perf_counter()
            tg = optimize_targets(model, tokenizer, name, [req], templates, hp.target)
            t1 = time.perf_counter()
            k = keys(model, tokenizer, name, [req], templates)[0]  # (d_in,)
            t2 = time.perf_counter()
            ld = rank_one(tg.delta[0].cpu(), k.cpu(), cov if hp.mom2_adjustment else None, hp.ridge)
            t3 = time.perf_counter()
            layer_deltas.append(ld)
            applied.append(D.apply(model, D.Delta({name: ld})))  # the next request sees this one
            times.targets += t1 - t0
            times.keys += t2 - t1
            times.solve += t3 - t2
            times.per_request.append({"id": req.id, "steps": tg.steps[0], "nll": tg.nll[0], "loss": tg.loss[0],
                                      "delta_norm": float(tg.delta[0].norm()), "h_norm": float(tg.init[0].norm()),
                                      "step_seconds": tg.step_seconds,
                                      "seconds": round(t3 - t0, 4)})
            if progress:
                progress(i + 1, len(requests))
    finally:
        for a in reversed(applied):
            a.revert()
    U = torch.cat([d.U for d in layer_deltas], 1)
    V = torch.cat([d.V for d in layer_deltas], 1)
    return D.Delta({name: D.LayerDelta(U, V)}), times


def run(x: Inputs) -> Output:
    cov = x.covs.get(x.hp.layer) if x.hp.mom2_adjustment else None
    delta, tm = compute(x.model, x.tokenizer, x.requests, x.hp, x.templates, cov,
                        progress=lambda a, b: x.emit("request", {"done": a, "total": b}))
    return Output(delta, {"keys": tm.keys, "targets": tm.targets, "solve": tm.solve}, {"per_request": tm.per_request})
