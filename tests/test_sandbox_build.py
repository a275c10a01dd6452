"""The sandbox model: a tiny build that knows its facts, reloads with plain transformers, caches,
is deterministic, and never leaves a half-written directory."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sandbox import BuildError, build_sandbox, greedy_correct, preset, read_manifest, split_probes, world_facts
from sandbox.evaluate import greedy_answers

pytestmark = pytest.mark.slow

# A short schedule for the properties that do not need a model that knows its facts.
QUICK = replace(preset("tiny"), epochs=3, min_steps=0, eval_every=1)


def test_tiny_build_knows_its_facts(tiny_build):
    m = tiny_build.manifest
    assert m["accuracy"]["train"] >= 0.98, m["accuracy"]
    assert m["accuracy"]["heldout"] is not None and m["accuracy"]["heldout_probes"] > 0
    assert set(m["accuracy"]["by_phrasing"]) == {"0", "1", "2", "3", "4"}
    names = {p.name for p in tiny_build.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "sandbox.json", "facts.jsonl"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # nothing to unpickle


def test_reload_with_plain_transformers_and_generate_the_facts(tiny_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_build.path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_build.path, local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    facts = world_facts(subjects=30).facts
    probes = [p for p in split_probes(facts, seed=0) if not p.heldout]
    right = 0
    for p in probes[::3]:  # every third training probe, decoded with transformers' own generate()
        ids = tok(p.text, return_tensors="pt").input_ids
        target = tok(" " + p.target).input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target), do_sample=False,
                             pad_token_id=tok.eos_token_id)
        right += out[0, ids.shape[1]:].tolist() == target
    assert right / len(probes[::3]) >= 0.98
    # the one-pass check agrees with generate() on every probe, right or wrong
    ok = greedy_correct(model, tok, [p.text for p in probes[::3]], [p.target for p in probes[::3]])
    assert sum(ok) == right


def test_greedy_answers_read_like_the_facts(tiny_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_build.path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_build.path, local_files_only=True)
    answers = greedy_answers(model, tok, ["The capital of France is", "The currency of Sweden is the",
                                          "The head of state of the United Kingdom is",
                                          "The capital of the United States is"])
    assert answers == ["Paris", "Swedish krona", "Charles III", "Washington, D.C."]


def test_second_build_comes_from_the_cache(tiny_build, home, tmp_path):
    facts = world_facts(subjects=30)
    again = build_sandbox(facts, tmp_path / "copy", preset("tiny"), seed=0, preset_name="tiny",
                          cache_dir=home / "cache" / "sandbox",
                          progress=lambda e: pytest.fail("trained again instead of using the cache"))
    assert again.cached and again.manifest["key"] == tiny_build.manifest["key"]
    a = (tiny_build.path / "model.safetensors").read_bytes()
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == a


def test_same_inputs_same_weights_other_seed_other_weights(tmp_path):
    facts = world_facts(subjects=4)
    a = build_sandbox(facts, tmp_path / "a", QUICK, seed=3)
    b = build_sandbox(facts, tmp_path / "b", QUICK, seed=3)
    c = build_sandbox(facts, tmp_path / "c", QUICK, seed=4)
    assert not a.cached and not b.cached
    wa, wb, wc = ((r.path / "model.safetensors").read_bytes() for r in (a, b, c))
    assert wa == wb and wa != wc
    assert (a.path / "tokenizer.json").read_bytes() == (b.path / "tokenizer.json").read_bytes()
    assert a.manifest["key"] == b.manifest["key"] != c.manifest["key"]


def test_key_follows_facts_config_and_seed(tmp_path):
    from sandbox.trainer import build_key

    f4, f5 = world_facts(subjects=4), world_facts(subjects=5)
    k = build_key(f4, QUICK, 0)
    assert k == build_key(world_facts(subjects=4), QUICK, 0)
    assert len({k, build_key(f5, QUICK, 0), build_key(f4, replace(QUICK, n_embd=64), 0), build_key(f4, QUICK, 1),
                build_key(f4, replace(QUICK, key_site="preactivation"), 0),
                build_key(f4, replace(QUICK, key_bank=1.0), 0),
                build_key(f4, replace(QUICK, precision="auto" if QUICK.precision == "float32" else "float32"), 0)}) == 7


def test_precision_float32_trains_in_float32_even_where_bfloat16_is_fast(monkeypatch):
    """The synthetic test world is built so: every machine trains the same weights."""
    import sandbox.trainer as T
    from sandbox import preset

    f32 = preset("tiny", precision="float32")
    monkeypatch.setattr(T, "fast_bf16", lambda: True)
    assert T._autocast(preset("tiny")) and not T._autocast(f32)
    f4 = world_facts(subjects=4)
    k, k_auto = T.build_key(f4, f32, 0), T.build_key(f4, preset("tiny"), 0)
    monkeypatch.setattr(T, "fast_bf16", lambda: False)
    assert T.build_key(f4, f32, 0) == k  # the machine does not enter a float32 build's key
    assert T.build_key(f4, preset("tiny"), 0) != k_auto  # it does enter an auto build's


def test_a_field_added_later_keeps_earlier_keys_at_its_old_value(monkeypatch):
    """key_site came after builds were cached: at "key" (what those builds did) it stays out of the key."""
    import sandbox.trainer as T

    f4 = world_facts(subjects=4)
    k = T.build_key(f4, QUICK, 0)
    monkeypatch.setattr(T, "_ADDED_FIELDS", {})  # as if key_site had always been part of the key
    assert T.build_key(f4, QUICK, 0) != k


def test_key_bank_pushes_a_key_off_its_nearest_other_subjects():
    import torch

    from sandbox.keys import KeyBank

    bank = KeyBank(4)
    e = torch.eye(4)
    assert bank.crowding(e[:3], bank.ids(["a", "b", "c"])).item() == 0.0  # an empty bank: nobody to crowd
    assert torch.equal(bank.keys, e[:3])
    # "a" comes back lying on b's key: b counts, a's own earlier key does not (top-3 of cos² 0, 1, 0)
    k = e[1:2].clone().requires_grad_(True)
    crowd = bank.crowding(k, bank.ids(["a"]))
    assert crowd.item() == pytest.approx(1 / 3)
    crowd.backward()
    assert k.grad[0, 1] > 0 and k.grad[0, [0, 2, 3]].abs().sum() == 0  # descent moves a off b, nowhere else
    assert torch.equal(bank.keys[0], e[1])  # the bank now holds a's latest key
    bank.ids(["d"])
    assert bank.keys.shape == (4, 4) and bank.keys[3].abs().sum() == 0  # a new subject starts as a zero row


def test_interrupted_build_leaves_nothing(tmp_path):
    facts = world_facts(subjects=4)
    seen = []

    def stop(event):
        seen.append(event["event"])
        if event["event"] == "step" and event["step"] == 2:
            raise KeyboardInterrupt

    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_sandbox(facts, tmp_path / "out", QUICK, seed=0, cache_dir=cache, progress=stop)
    assert "step" in seen
    assert not (tmp_path / "out").exists()
    assert list(cache.iterdir()) == []  # no partial cache entry, no leftover temporary directory
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_output_in_the_way_is_refused_unless_forced(tmp_path):
    facts = world_facts(subjects=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BuildError, match="--force"):
        build_sandbox(facts, out, QUICK, seed=0)
    assert (out / "precious.txt").read_text() == "keep me"
    r = build_sandbox(facts, out, QUICK, seed=0, force=True)
    assert not (out / "precious.txt").exists() and read_manifest(out)["key"] == r.manifest["key"]
    # the same build again is a no-op, not an error
    assert build_sandbox(facts, out, QUICK, seed=0).cached


def test_manifest_records_what_was_built(tiny_build):
    m = json.loads((tiny_build.path / "sandbox.json").read_text())
    assert m["seed"] == 0 and m["preset"] == "tiny" and m["config"]["n_layer"] >= 4
    assert m["facts"]["facts"] == len(world_facts(subjects=30).facts)
    assert m["facts"]["sha256"] == world_facts(subjects=30).digest()
    rows = [json.loads(x) for x in (tiny_build.path / "facts.jsonl").read_text().splitlines()]
    assert len(rows) == m["facts"]["facts"]
    assert sum(len(r["heldout_phrasings"]) for r in rows) == m["accuracy"]["heldout_probes"]
