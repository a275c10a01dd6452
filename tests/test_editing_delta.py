"""Deltas: apply adds U Vᵀ in the right orientation, revert is bit-exact, files round-trip, deltas compose."""

from __future__ import annotations

import pytest
import torch

from editing.arch import edit_matrix, is_transposed, spec_for, weight_out_in
from editing.delta import Delta, DeltaError, LayerDelta, apply, weights_sha256

from .tiny_models import tiny_model

pytestmark = pytest.mark.unit


def _delta(model, layers=(0, 2), rank=2, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    spec = spec_for(model)
    out = {}
    for i in layers:
        W = weight_out_in(edit_matrix(model, i))
        out[spec.mlp_out_at(i)] = LayerDelta(torch.randn(W.shape[0], rank, generator=g) * scale,
                                             torch.randn(W.shape[1], rank, generator=g) * scale)
    return Delta(out, {"method": "test", "seed": seed})


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_apply_adds_the_delta_and_revert_is_exact(family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h0 = weights_sha256(model)
    d = _delta(model)
    applied = apply(model, d)
    for name, ld in d.layers.items():
        got = weight_out_in(model.get_submodule(name)).double() - weight_out_in_from(before, model, name)
        assert torch.allclose(got, ld.dense(), atol=1e-6)  # (out, in) whatever the storage
    assert weights_sha256(model) != h0
    applied.revert()
    assert weights_sha256(model) == h0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def weight_out_in_from(state, model, name):
    mod = model.get_submodule(name)
    w = state[f"{name}.weight"]
    return (w.T if is_transposed(mod) else w).double()


def test_round_trip_through_safetensors(tmp_path):
    model = tiny_model("gpt2")
    d = _delta(model)
    d.save(tmp_path / "delta.safetensors")
    again = Delta.load(tmp_path / "delta.safetensors")
    assert again.meta == d.meta and set(again.layers) == set(d.layers)
    for n in d.layers:
        assert torch.equal(again.layers[n].U, d.layers[n].U) and torch.equal(again.layers[n].V, d.layers[n].V)


def test_composition_equals_sequential_application():
    model = tiny_model("llama")
    h0 = weights_sha256(model)
    d1, d2 = _delta(model, (0, 1), seed=1), _delta(model, (1, 2), seed=2)
    a1 = apply(model, d1)
    a2 = apply(model, d2)
    seq = {k: v.clone() for k, v in model.state_dict().items()}
    a2.revert()
    a1.revert()
    assert weights_sha256(model) == h0
    both = d1.compose(d2)
    assert both.layers[spec_for(model).mlp_out_at(1)].rank == 4
    apply(model, both)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, seq[k], atol=1e-6), k


def test_bad_deltas_change_nothing(tmp_path):
    model = tiny_model("gpt2")
    h0 = weights_sha256(model)
    d = _delta(model)
    d.layers["transformer.h.1.mlp.c_proj"] = LayerDelta(torch.zeros(5, 1), torch.zeros(7, 1))
    with pytest.raises(DeltaError, match="delta is"):
        apply(model, d)
    assert weights_sha256(model) == h0
    with pytest.raises(DeltaError, match="no module"):
        apply(model, Delta({"transformer.h.9.mlp.c_proj": LayerDelta(torch.zeros(32, 1), torch.zeros(64, 1))}))
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DeltaError, match="cannot read"):
        Delta.load(tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DeltaError, match="not a factsmith delta"):
        Delta.load(tmp_path / "other.safetensors")
