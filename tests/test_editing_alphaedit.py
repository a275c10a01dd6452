"""AlphaEdit's algebra on small random matrices and a tiny random model: the projection, the update that leaves
preserved keys where they were, and the preserved keys carried from one edit into the next."""

from __future__ import annotations

import pytest
import torch

from editing import hparams as H
from editing.delta import apply
from editing.engine import compute_edit
from editing.methods.alphaedit import AlphaEditHparams
from editing.methods.alphaedit.solve import PreservedKeys, layer_update, nullspace_projection
from editing.requests import EditRequest
from editing.store import Cache

from .tiny_models import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


def _statistics(d: int = 48, rank: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C = E[k kᵀ] of keys that live in a ``rank``-dimensional subspace (plus a little noise), and 100 such keys."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]  # (d, rank)
    K0 = basis @ torch.randn(rank, 100, generator=g, dtype=torch.float64)  # (d, 100)
    C = K0 @ K0.T / 100 + 1e-8 * torch.eye(d, dtype=torch.float64)
    return C, K0


def _tiny_setup(v_steps: int):
    """A tiny random GPT-2, its tokenizer, and AlphaEdit hparams for it (layer 1)."""
    target = H.TargetHparams(v_steps=v_steps, v_lr=0.5, context_templates=((4, 2),), v_weight_decay=1e-4,
                             clamp_norm_factor=1000.0)
    hp = AlphaEditHparams(layers=(1,), target=target, stats=H.StatsHparams(mom2_samples=64, sample_tokens=16),
                          nullspace_threshold=0.5, l2=1e-3)
    return tiny_tokenizer(320), tiny_model("gpt2", vocab=320), hp


def test_the_projection_sends_the_preserved_keys_to_zero():
    C, K0 = _statistics()
    P = nullspace_projection(C, threshold=1e-4)
    assert torch.allclose(P, P.T) and torch.allclose(P @ P, P, atol=1e-10)  # an orthogonal projection
    assert round(float(torch.trace(P))) == 48 - 16  # the directions the keys never reach
    assert float((P @ K0).norm() / K0.norm()) < 1e-6


def test_the_update_leaves_preserved_and_earlier_keys_and_reaches_the_new_ones():
    C, K0 = _statistics()
    P = nullspace_projection(C, threshold=1e-4)
    g = torch.Generator().manual_seed(1)
    K1 = P @ torch.randn(48, 3, generator=g, dtype=torch.float64)  # new keys, in the null space
    R = torch.randn(8, 3, generator=g, dtype=torch.float64)  # (d_out, n) the residual each key asks for
    ld = layer_update(R, K1, P, torch.zeros(48, 48, dtype=torch.float64), alpha=1e-6)
    dW = ld.U.double() @ ld.V.double().T  # (d_out, d_k)
    assert float((dW @ K0).norm()) < 1e-4 * float(dW.norm() * K0.norm())  # the statistics' keys: untouched
    assert torch.allclose(dW @ K1, R, atol=1e-3)  # the new keys: their residuals
    # an earlier edit's key in the null space is protected only through the preserved sums
    Kp = P @ torch.randn(48, 2, generator=g, dtype=torch.float64)
    free = layer_update(R, K1, P, torch.zeros(48, 48, dtype=torch.float64), alpha=1e-6)
    kept = layer_update(R, K1, P, Kp @ Kp.T, alpha=1e-6)
    moved = lambda ld: float((ld.U.double() @ ld.V.double().T @ Kp).norm())  # noqa: E731
    assert moved(kept) < 1e-3 * moved(free)



def test_a_key_held_by_an_earlier_edit_blocks_its_next_edit():
    """A subject edited before has the same key (cosine 1.000 on the sandbox, whatever the relation): its earlier
    edit's constraint (leave that key's output as it is) fights the new edit (change it). Why the edits a batch
    replaces leave the preserved sums (next test)."""
    C, _ = _statistics()
    P = nullspace_projection(C, threshold=1e-4)
    g = torch.Generator().manual_seed(2)
    K1 = P @ torch.randn(48, 3, generator=g, dtype=torch.float64)
    R = torch.randn(8, 3, generator=g, dtype=torch.float64)
    again = K1[:, :1]  # the first request's subject was edited before: the same key
    share = lambda ld: float((ld.U.double() @ ld.V.double().T @ again).squeeze() @ R[:, 0] / (R[:, 0] @ R[:, 0]))  # noqa: E731
    assert share(layer_update(R, K1, P, again @ again.T, alpha=1e-6)) < 0.6
    assert abs(share(layer_update(R, K1, P, torch.zeros(48, 48, dtype=torch.float64), alpha=1e-6)) - 1.0) < 1e-3


def test_the_edits_a_batch_replaces_leave_the_state_and_no_other(tmp_path):
    """compute_edit(released=[the subject's earlier edit]): that edit's keys leave the preserved sums, the other
    earlier edits' stay, the batch's join -- exactly, where (as here) one layer is edited and its input does not
    depend on the edit."""
    from editing.arch import spec_for
    from editing.targets import keys

    tok, model, hp = _tiny_setup(v_steps=5)
    cache = Cache(tmp_path / "cache")
    a = EditRequest("France", "The capital of {}", "Warsaw", id="a")
    b = EditRequest("Poland", "The head of state of {}", "Japanese", id="b")
    r1 = compute_edit(model, tok, [a, b], hp, cache)
    apply(model, r1.delta)
    c = EditRequest("France", "The official language of {}", "Berlin", id="c")  # France again
    r2 = compute_edit(model, tok, [c], hp, cache, state=r1.state, released=[a])
    held = compute_edit(model, tok, [c], hp, cache, state=r1.state)
    templates = r1.delta.meta["context_templates"]

    def moments(reqs):
        K = keys(model, tok, spec_for(model).mlp_out_at(1), reqs, templates).T.double()
        return K @ K.T

    assert r2.state.count == 2 and held.state.count == 3
    scale = float(r1.state.sums[1].norm())
    assert float((r2.state.sums[1] - (moments([b]) + moments([c]))).norm()) < 1e-6 * scale
    assert float((held.state.sums[1] - (moments([a]) + moments([b]) + moments([c]))).norm()) < 1e-6 * scale
    assert r2.delta.meta["context_templates"] == templates  # the state's: its keys were read with them
    V = lambda r: next(iter(r.delta.layers.values())).V  # noqa: E731
    assert not torch.allclose(V(r2), V(held))  # the solve no longer holds a's key


def test_held_keys_read_under_their_own_templates_leave_exactly_while_each_edit_keeps_its_own(tmp_path):
    """preserve_templates: the held keys are read under templates sampled once, at the first edit, and kept in
    the state; a later edit's targets and solve still use its own, and a replaced edit's keys leave exactly."""
    from editing.arch import spec_for
    from editing.targets import keys

    tok, model, hp = _tiny_setup(v_steps=5)
    hp = H.with_changes(hp, preserve_templates=((3, 4),))
    cache = Cache(tmp_path / "cache")
    a = EditRequest("France", "The capital of {}", "Warsaw", id="a")
    b = EditRequest("Poland", "The head of state of {}", "Japanese", id="b")
    r1 = compute_edit(model, tok, [a, b], hp, cache)
    held = list(r1.state.templates)
    assert len(held) == 5 and held[0] == "{}" and held != r1.delta.meta["context_templates"]
    apply(model, r1.delta)
    c = EditRequest("France", "The official language of {}", "Berlin", id="c")
    r2 = compute_edit(model, tok, [c], hp, cache, state=r1.state, released=[a])
    assert list(r2.state.templates) == held and r2.delta.meta["context_templates"] != held

    def moments(reqs):
        K = keys(model, tok, spec_for(model).mlp_out_at(1), reqs, held).T.double()
        return K @ K.T

    scale = float(r1.state.sums[1].norm())
    assert float((r2.state.sums[1] - (moments([b]) + moments([c]))).norm()) < 1e-6 * scale
    with pytest.raises(H.HparamsError, match="preserve_templates"):
        H.with_changes(hp, preserve_templates=((3, 0),))


def test_compute_edit_carries_the_preserved_keys_from_one_edit_to_the_next(tmp_path):
    tok, model, hp = _tiny_setup(v_steps=10)
    cache = Cache(tmp_path / "cache")
    first = [EditRequest("France", "The capital of {}", "Warsaw", id="a"),
             EditRequest("Poland", "The head of state of {}", "Japanese", id="b")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r1 = compute_edit(model, tok, first, hp, cache)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(r1.state, PreservedKeys) and r1.state.count == 2
    s1 = r1.state.sums[1]
    assert s1.shape == (64, 64) and torch.allclose(s1, s1.T) and torch.linalg.matrix_rank(s1) == 2
    assert r1.details["nullspace"][1]["dim"] > 0
    apply(model, r1.delta)
    second = [EditRequest("Japan", "The official language of {}", "Berlin", id="c")]
    r2 = compute_edit(model, tok, second, hp, cache, state=r1.state)
    assert r2.state.count == 3 and torch.linalg.matrix_rank(r2.state.sums[1]) == 3
    fresh = compute_edit(model, tok, second, hp, cache)  # the same edit without what the first one preserved
    assert not torch.allclose(r2.delta.layers[next(iter(r2.delta.layers))].V,
                              fresh.delta.layers[next(iter(fresh.delta.layers))].V)


def test_preserve_weight_holds_the_earlier_edits_keys_harder(tmp_path):
    """preserve_weight w in P (K Kᵀ + w K_p K_pᵀ + λ C) + α I: the same second edit moves the first edit's keys'
    outputs less at w 10 than at the paper's 1, and still reaches its own keys, which lie apart from them (the
    trade-off shows only where they overlap: on this tiny model the two moved its own keys' outputs within 1e-7 of
    each other, one way on one machine and the other way on another)."""
    from editing.arch import spec_for
    from editing.targets import keys

    tok, model, hp = _tiny_setup(v_steps=10)
    cache = Cache(tmp_path / "cache")
    first = [EditRequest("France", "The capital of {}", "Warsaw", id="a"),
             EditRequest("Poland", "The head of state of {}", "Japanese", id="b")]
    r1 = compute_edit(model, tok, first, hp, cache)
    apply(model, r1.delta)
    second = [EditRequest("Japan", "The official language of {}", "Berlin", id="c")]
    one = compute_edit(model, tok, second, hp, cache, state=r1.state)
    ten = compute_edit(model, tok, second, H.with_changes(hp, preserve_weight=10.0), cache, state=r1.state)
    held = keys(model, tok, spec_for(model).mlp_out_at(1), first, list(r1.state.templates)).T.double()
    own = keys(model, tok, spec_for(model).mlp_out_at(1), second, list(r1.state.templates)).T.double()

    def moved(r, K):
        ld = r.delta.layers[next(iter(r.delta.layers))]
        return float((ld.U.double() @ ld.V.double().T @ K).norm())

    assert moved(ten, held) < 0.5 * moved(one, held)
    assert moved(ten, own) > 0.99 * moved(one, own) > 0
    assert ten.state.count == one.state.count == 3 and torch.equal(ten.state.sums[1], one.state.sums[1])
    with pytest.raises(H.HparamsError, match="preserve_weight"):
        H.with_changes(hp, preserve_weight=0.0)


def test_the_state_round_trips_through_safetensors_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(2)
    K = torch.randn(32, 5, generator=g, dtype=torch.float64)
    state = PreservedKeys({1: K @ K.T, 3: 2 * K @ K.T}, count=5, templates=("{}", "It was said. {}"))
    state.save(tmp_path / "state.safetensors")
    back = PreservedKeys.load(tmp_path / "state.safetensors")
    assert back.count == 5 and sorted(back.sums) == [1, 3] and back.templates == state.templates
    assert all(torch.equal(back.sums[k], state.sums[k]) and back.sums[k].dtype == torch.float64 for k in state.sums)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something else"})
    with pytest.raises(ValueError, match="expected an AlphaEdit state"):
        PreservedKeys.load(tmp_path / "other.safetensors")


def test_key_moments_are_each_requests_mean_outer_product_over_its_prompts():
    # batched (one product per forward batch, here batches of 3 rows) and exact: Σ_requests mean_prompts k kᵀ
    from editing.arch import spec_for
    from editing.targets import _each_key, _key_rows, key_moments

    tok, model, _ = _tiny_setup(v_steps=1)
    reqs = [EditRequest("France", "The capital of {}", "Warsaw"),
            EditRequest("Poland", "The head of state of {}", "Japanese", rewrite_prompts=("{} is led by",))]
    templates = ["{}", "Once upon a time. {}", "Then. {}"]
    name = spec_for(model).mlp_out_at(1)
    rows = _key_rows(tok, reqs, templates)
    want = 0
    for r, k in _each_key(model, tok, name, rows, 3):  # the same forward batches (padding moves float32 keys)
        want = want + torch.outer(k, k) / sum(1 for x in rows if x.req == r.req)
    got = key_moments(model, tok, name, reqs, templates, batch_size=3)
    assert len(rows) == 7 and got.dtype == torch.float64 and torch.equal(got, got.T)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
