"""The method table: a method is one row (its hparams class, its solver, what it needs), and the engine, the
hparams loader and the CLI take everything from the row. A toy method added here for the test -- the least
change that moves each request's key to a fixed vector, counting edits in the state it carries -- runs through
the same paths as ROME and MEMIT."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from editing import hparams as H
from editing import methods
from editing.engine import compute_edit
from editing.methods.base import HparamsError, Inputs, Method, Output, StatsHparams, TargetHparams, check_fields
from editing.requests import EditRequest
from editing.store import Cache

from .tiny_models import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class ToyHparams:
    layer: int
    target: TargetHparams = field(default_factory=lambda: TargetHparams(context_templates=((4, 1),)))
    stats: StatsHparams = field(default_factory=StatsHparams)
    scale: float = 1.0

    method = "toy"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.scale <= 0:
            raise HparamsError(f"'scale': expected a value > 0, found {self.scale}")


def run(x: Inputs) -> Output:
    """Rank one per request at ``hp.layer``: ΔW = u kᵀ / ‖k‖² with u a constant vector, so ΔW k = u."""
    from editing import delta as D
    from editing.arch import spec_for
    from editing.targets import keys

    name = spec_for(x.model).mlp_out_at(x.hp.layer)
    K = keys(x.model, x.tokenizer, name, x.requests, x.templates).T.cpu()  # (d_k, n)
    d_out = x.model.get_submodule(name).weight.shape
    d_out = d_out[1] if d_out[0] == K.shape[0] else d_out[0]  # Conv1D stores (in, out)
    U = torch.full((d_out, K.shape[1]), x.hp.scale)  # (d_out, n)
    V = K / K.pow(2).sum(0, keepdim=True)  # (d_k, n)
    for i in range(len(x.requests)):
        x.emit("request", {"done": i + 1, "total": len(x.requests)})
    state = {"edits": (x.state or {}).get("edits", 0) + len(x.requests)}
    return Output(D.Delta({name: D.LayerDelta(U, V)}), {"keys": 0.0, "targets": 0.0, "solve": 0.0},
                  {"rows": K.shape[1]}, state)


TOY = Method(name="toy", summary="a fixed vector per key", hparams=ToyHparams, solver=__name__,
             layers=lambda hp: [hp.layer], layers_key="layer", needs_stats=lambda hp: False, distinct_keys=True,
             progress=lambda n: ("toy edits", n), events=("request",), stateful=True)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "toy", TOY)
    return TOY


def test_the_shipped_table_names_its_methods_and_the_cli_reads_it():
    from typer.testing import CliRunner

    from flows.cli import app

    assert methods.names() == ("rome", "memit", "alphaedit") and methods.DEFAULT == "memit"
    assert methods.choices() == "rome, memit or alphaedit"
    r = CliRunner().invoke(app, ["edit", "--model", ".", "--requests", "x", "--out", "y", "--method", "toy",
                                 "--json"])
    assert r.exit_code == 2 and "expected rome, memit or alphaedit, found 'toy'" in r.stdout


def test_a_method_added_as_one_row_is_loaded_computed_and_carries_its_state(toy, tmp_path):
    hp = H.from_dict("toy", {"layer": 1, "scale": 0.5})
    assert isinstance(hp, ToyHparams) and methods.of(hp) is toy
    with pytest.raises(HparamsError, match="unknown key.*'scal'"):
        H.from_dict("toy", {"layer": 1, "scal": 2})
    assert "toy" in methods.choices()

    tok = tiny_tokenizer(320)
    model = tiny_model("gpt2", vocab=320)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reqs = [EditRequest("France", "The capital of {}", "Warsaw", id="a"),
            EditRequest("Poland", "The capital of {}", "Paris", id="b")]
    events = []
    res = compute_edit(model, tok, reqs, hp, Cache(tmp_path / "cache"), on_event=lambda p, d: events.append(p))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert res.details == {"rows": 2} and res.state == {"edits": 2}
    assert res.delta.meta["method"] == "toy" and res.delta.meta["stats_corpus"] is None  # needs_stats False
    assert events[:3] == ["templates", "stats", "targets"] and events[3:] == ["request", "request"]
    again = compute_edit(model, tok, reqs[:1], hp, Cache(tmp_path / "cache"), state=res.state)
    assert again.state == {"edits": 3}  # the state in is what the last edit carried out
    with pytest.raises(ValueError, match="'a' and 'c'"):  # distinct_keys from the row
        compute_edit(model, tok, [reqs[0], EditRequest("France", "The capital of {}", "Rome", id="c")], hp,
                     Cache(tmp_path / "cache"))
