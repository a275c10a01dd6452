"""ROME and MEMIT on a real pretrained checkpoint: stories260K (Llama architecture, a BOS-adding
tokenizer, trained on TinyStories). Skipped where ../shared/data is absent."""

from __future__ import annotations

import pytest
import torch

from editing import hparams as H
from editing.delta import apply, weights_sha256
from editing.engine import compute_edit
from editing.methods.memit import MemitHparams
from editing.methods.rome import RomeHparams
from editing.requests import EditRequest
from editing.score import score_targets
from editing.store import Cache

from .conftest import shared

pytestmark = [pytest.mark.shared_data]

REQS = [
    EditRequest("Lily", "Once upon a time, there was a little girl named {}. She loved to play with her", "ball",
                id="s1"),
    EditRequest("Tom", "{} went to the park with his mom. He saw a big", "dog", id="s2"),
]


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared("stories260K")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_edit_a_real_pretrained_llama(stories, method, tmp_path):
    model, tok = stories
    assert tok("Lily")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds a BOS: positions by offsets
    # A 64-wide model has small MLP outputs: the paper's decay ‖δ‖/‖h‖² (weight 0.5) pins δ near zero for
    # some requests here, so it is lowered.
    target = H.TargetHparams(v_steps=20, v_lr=0.5, v_weight_decay=0.01, context_templates=((5, 3),))
    stats = H.StatsHparams(mom2_samples=64, sample_tokens=32)
    hp = (RomeHparams(layer=1, target=target, stats=stats) if method == "rome"
          else MemitHparams(layers=(1, 2), target=target, stats=stats, mom2_update_weight=100.0))
    h0 = weights_sha256(model)
    before = [s.logprob for s in score_targets(model, tok, [r.text for r in REQS], [r.target_new for r in REQS])]
    res = compute_edit(model, tok, REQS, hp, Cache(tmp_path))
    assert weights_sha256(model) == h0
    applied = apply(model, res.delta)
    after = [s.logprob for s in score_targets(model, tok, [r.text for r in REQS], [r.target_new for r in REQS])]
    applied.revert()
    assert weights_sha256(model) == h0
    assert all(b > a + 1.0 for a, b in zip(before, after)), (before, after)
    assert torch.isfinite(torch.tensor(after)).all()
