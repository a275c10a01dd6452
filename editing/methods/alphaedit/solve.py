"""AlphaEdit's solve: MEMIT's targets and layer schedule (:func:`editing.methods.memit.solve.compute`) with each
layer's update

    ΔW = R Kᵀ P ((K Kᵀ + K_p K_pᵀ + λ C) P + α I)⁻¹          solved in float64,

P the projection onto the null space of the statistics C (its eigen-directions with eigenvalue at most
``nullspace_threshold`` × the largest), K_p K_pᵀ the sum of k kᵀ over every key edited before, λ (``mom2_update_weight``, 0 in the paper) MEMIT's
weight of the statistics in the directions P keeps. ΔW K₀ = 0 for
every key K₀ in that null space's complement -- the keys the statistics see -- and the earlier edits' keys enter
the system, so the update leaves both where they were. Stored low rank: U = R (d, n), V = A⁻¹ P K (d_k, n) with
A = P (K Kᵀ + K_p K_pᵀ) + α I (Aᵀ is the matrix above).

State carried out of an edit (:class:`PreservedKeys`): K_p K_pᵀ plus this edit's keys, read on the edited model
(as the reference does), per layer. It is a d_k × d_k matrix per layer whatever the number of edits.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import torch

from ... import delta as D
from ...arch import spec_for
from ...targets import keys
from ..base import Inputs, Output
from ..memit import solve as memit

log = logging.getLogger(__name__)


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def nullspace_projection(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """(d_k, d_k) float64: the projection onto the span of C's eigenvectors whose eigenvalue is at most
    ``threshold`` × the largest (the directions the statistics' keys barely reach)."""
    ev, vecs = torch.linalg.eigh(cov.double())  # ascending
    keep = ev <= threshold * ev[-1].clamp_min(0)
    U = vecs[:, keep]  # (d_k, r)
    return U @ U.T


def release(preserved: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """K_p K_pᵀ with the batch's own key directions taken out: Q K_p K_pᵀ Q, Q = I − the projection onto span(K).

    An earlier edit's key in the span of this batch's keys is a key this batch edits again: a subject's key is
    the same whatever relation the prompt asks about (cosine 1.000 between two relations of one country on the
    tiny sandbox), so a second edit of a subject would be asked to leave that key's output unchanged and to
    change it at once. The solve then realised 0.5-0.76 of each target with ‖ΔW‖ 508-866 (29-59 before) and
    the model said none of its 40 edits (tiny sandbox, the fourth run of 10, the first to edit subjects again).
    The batch decides those directions; the subject's other answers, earlier edits among them, are held by the
    target optimisation's keep prompts, as in MEMIT. Other subjects' keys are almost orthogonal to the batch's
    (cosine < 0.01 there) and keep their constraint."""
    Q, _ = torch.linalg.qr(K.double())  # (d_k, n) orthonormal basis of the batch's keys
    M = preserved.double() - Q @ (Q.T @ preserved.double())  # (I − QQᵀ) K_p K_pᵀ
    return M - (M @ Q) @ Q.T  # ... (I − QQᵀ)


def layer_update(resid: torch.Tensor, K: torch.Tensor, P: torch.Tensor, preserved: torch.Tensor,
                 alpha: float) -> D.LayerDelta:
    """ΔW = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + α I)⁻¹ as factors U = R (d, n), V = A⁻¹ P K (d_k, n).

    resid: (d, n), K: (d_k, n), P and preserved (K_p K_pᵀ): (d_k, d_k); float64 solve."""
    Kd = K.double()
    A = P @ (Kd @ Kd.T + preserved.double()) + alpha * torch.eye(P.shape[0], dtype=torch.float64)
    V = torch.linalg.solve(A, P @ Kd)  # (d_k, n)
    return D.LayerDelta(resid.double().float(), V.float())


STATE_FORMAT = "factsmith.alphaedit-state/1"


@dataclass
class PreservedKeys:
    """What AlphaEdit carries from one edit to the next: Σ k kᵀ of the edited keys, per layer (float64). Its
    size is bounded by the layers' widths (d_k² per layer), never by the number of edits."""

    sums: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (d_k, d_k)
    count: int = 0  # keys (requests) edited so far

    def at(self, layer: int, width: int) -> torch.Tensor:
        return self.sums.get(layer, torch.zeros(width, width, dtype=torch.float64))

    def save(self, path) -> None:
        """safetensors: one tensor a layer (``sum.<layer>``), the count in the metadata."""
        from safetensors.torch import save_file

        save_file({f"sum.{layer}": t.contiguous() for layer, t in self.sums.items()}, str(path),
                  metadata={"format": STATE_FORMAT, "count": str(self.count)})

    @classmethod
    def load(cls, path) -> "PreservedKeys":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"{path}: expected an AlphaEdit state ({STATE_FORMAT}), found format "
                                 f"{meta.get('format')!r}")
            return cls({int(k.split(".", 1)[1]): f.get_tensor(k) for k in f.keys()}, int(meta["count"]))


def load_state(path) -> PreservedKeys:
    return PreservedKeys.load(path)


def projections(x: Inputs) -> tuple[dict[int, torch.Tensor], dict[int, dict]]:
    """Each layer's P (from the cache when these statistics and this threshold were seen before), and what it
    is: the null space's dimension and its hash."""
    out, info = {}, {}
    for layer in x.hp.layers:
        desc = {"kind": "nullspace", "cov": tensor_sha256(x.covs[layer].double()),
                "threshold": x.hp.nullspace_threshold, "version": 1}
        hit = x.cache.get_tensors("nullspace", desc) if x.cache is not None else None
        if hit is not None:
            P = hit["P"]
        else:
            P = nullspace_projection(x.covs[layer], x.hp.nullspace_threshold)
            if x.cache is not None:
                x.cache.put_tensors("nullspace", desc, {"P": P})
        out[layer] = P
        info[layer] = {"dim": int(round(float(torch.trace(P)))), "sha256": tensor_sha256(P)}
    return out, info


def run(x: Inputs) -> Output:
    hp = x.hp
    state = x.state if x.state is not None else PreservedKeys()
    Ps, info = projections(x)
    alphas = {layer: hp.l2 * float(torch.trace(x.covs[layer].double())) / x.covs[layer].shape[0]
              for layer in hp.layers}

    def solve_layer(layer: int, resid: torch.Tensor, K: torch.Tensor) -> D.LayerDelta:
        preserved = state.at(layer, K.shape[0])
        if hp.release_batch_keys:
            preserved = release(preserved, K)
        if hp.mom2_update_weight:
            preserved = preserved + hp.mom2_update_weight * x.covs[layer].double()
        return layer_update(resid, K, Ps[layer], preserved, alphas[layer])

    delta, tm = memit.compute(x.model, x.tokenizer, x.requests, hp, x.templates, x.covs,
                              progress=lambda what: x.emit("solve", {"step": what}), solve_layer=solve_layer)
    spec = spec_for(x.model)
    applied = D.apply(x.model, delta)
    try:  # the edited keys as the edited model computes them: what later edits must preserve
        sums = {}
        for layer in hp.layers:
            K = keys(x.model, x.tokenizer, spec.mlp_out_at(layer), x.requests, x.templates).T.cpu().double()
            sums[layer] = state.at(layer, K.shape[0]) + K @ K.T
    finally:
        applied.revert()
    out_state = PreservedKeys(sums, state.count + len(x.requests))
    details = {"target_steps": tm.target_steps, "target_nll": tm.target_nll, "realized": tm.realized,
               "realize_rounds": tm.realize_rounds, "nullspace": info, "preserved_keys": out_state.count}
    return Output(delta, {"keys": tm.keys, "targets": tm.targets, "solve": tm.solve}, details, out_state)
