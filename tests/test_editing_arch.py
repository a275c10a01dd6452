"""The architecture table and the hook utility, on tiny random models of every family."""

from __future__ import annotations

import pytest
import torch

from editing.arch import ArchitectureError, edit_matrix, is_transposed, key_size, n_layers, spec_for, weight_out_in
from editing.hooks import Trace

from .tiny_models import FAMILIES, tiny_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def test_table_finds_the_edit_matrix_with_the_right_orientation(model):
    spec = spec_for(model)
    assert spec.family == model.config.model_type
    assert n_layers(model) == 3
    m = edit_matrix(model, 1)
    W = weight_out_in(m)
    assert W.shape == (32, 64)  # (d_model, d_mlp): value = W @ key
    assert key_size(model) == 64
    assert is_transposed(m) == (spec.family == "gpt2")  # GPT-2 stores Conv1D weights (in, out)


def test_square_mlp_orientation_comes_from_the_type_not_the_shape():
    for family in ("gpt2", "llama"):
        m = tiny_model(family, d_model=32, d_mlp=32)
        mod = edit_matrix(m, 0)
        assert weight_out_in(mod).shape == (32, 32)
        assert is_transposed(mod) == (family == "gpt2")


def test_trace_reads_keys_and_values_of_the_edit_matrix(model):
    spec = spec_for(model)
    name = spec.mlp_out_at(1)
    ids = torch.randint(1, 128, (2, 7))
    with Trace(model, [name], retain_input=True) as tr:
        model(ids)
    k, v = tr[name].input, tr[name].output
    assert k.shape == (2, 7, 64) and v.shape == (2, 7, 32)
    mod = edit_matrix(model, 1)
    bias = mod.bias if mod.bias is not None else 0
    assert torch.allclose(k @ weight_out_in(mod).T + bias, v, atol=1e-5)


def test_trace_edits_outputs_and_always_removes_its_hooks(model):
    spec = spec_for(model)
    names = [spec.layer(0), spec.mlp_at(1)]
    ids = torch.randint(1, 128, (1, 5))
    base = model(ids).logits
    with Trace(model, names, edit_output=lambda n, h: h * 0 if n == names[1] else h) as tr:
        edited = model(ids).logits
    assert not torch.allclose(base, edited)
    assert tr[names[0]].output.shape == (1, 5, 32)  # block outputs are tensors or tuples: same record
    assert all(not model.get_submodule(n)._forward_hooks for n in names)
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(model, names, edit_output=lambda n, h: h):
            raise RuntimeError("boom")
    assert all(not model.get_submodule(n)._forward_hooks for n in names)
    assert torch.allclose(model(ids).logits, base)


def test_trace_handles_tuple_outputs():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x + 1, "extra"

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Pair()

        def forward(self, x):
            h, extra = self.inner(x)
            assert extra == "extra"
            return h

    net = Net()
    x = torch.zeros(2, 3)
    with Trace(net, ["inner"], edit_output=lambda n, h: h * 10) as tr:
        y = net(x)
    assert torch.equal(y, torch.full((2, 3), 10.0)) and torch.equal(tr["inner"].output, y)


def test_unknown_family_and_bad_names_are_clear_errors():
    class Fake(torch.nn.Module):
        class config:
            model_type = "bert"

    with pytest.raises(ArchitectureError, match="'bert' is not supported"):
        spec_for(Fake())
    m = tiny_model("gpt2")
    with pytest.raises(ArchitectureError, match="layer 5 out of range"):
        edit_matrix(m, 5)
    with pytest.raises(AttributeError):
        with Trace(m, ["transformer.h.9.mlp"]):
            pass
    assert not any(mod._forward_hooks for mod in m.modules())
