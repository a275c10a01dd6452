"""``factsmith edit`` and ``factsmith stats``: the edited model is written as an ordinary Hugging Face directory
equal, bit for bit, to base + delta; the base model is untouched; bad input exits 2 naming file, line or key;
statistics are cached. Fast tests on a tiny random GPT-2, one slow test on the sandbox model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

from .tiny_models import tiny_model, tiny_tokenizer

VOCAB = 320
# The subject ends each prompt: in a random model only an activation at the last prompt token can move the
# next-token distribution (see tests/test_editing_engine.py).
REQS = [
    {"id": "r1", "subject": "France", "prompt": "The capital of {}", "target_new": "Warsaw", "target_true": "Paris"},
    {"id": "r2", "subject": "Poland", "prompt": "The head of state of {}", "target_new": "Japanese",
     "target_true": "Andrzej Duda"},
    {"id": "r3", "subject": "Japan", "prompt": "The official language of {}", "target_new": "Berlin"},
]
# Small enough for seconds on a CPU; a random init's activations are tiny, so no decay / clamp to speak of.
MEMIT_YAML = """method: memit
layers: [0, 1]
mom2_update_weight: 10.0
target: {v_steps: 10, context_templates: [[4, 2]], v_weight_decay: 0.0001, clamp_norm_factor: 1000.0}
stats: {mom2_samples: 32, sample_tokens: 16}
"""
ROME_YAML = """method: rome
layer: 1
target: {v_steps: 10, context_templates: [[4, 2]], v_weight_decay: 0.0001, clamp_norm_factor: 1000.0}
stats: {mom2_samples: 32, sample_tokens: 16}
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random GPT-2 and its tokenizer saved as a Hugging Face directory."""
    d = tmp_path_factory.mktemp("base")
    tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2).save_pretrained(d)
    tiny_tokenizer(VOCAB).save_pretrained(d)
    return d


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    out = {"memit": tmp_path / "memit.yaml", "rome": tmp_path / "rome.yaml", "requests": tmp_path / "req.jsonl"}
    out["memit"].write_text(MEMIT_YAML)
    out["rome"].write_text(ROME_YAML)
    _write_requests(out["requests"], REQS)
    return out


def _write_requests(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def invoke(home: Path, *args: str):
    """Run the CLI in-process with its own FACTSMITH_HOME (so cache hits are this test's own)."""
    return CliRunner(env={"FACTSMITH_HOME": str(home)}).invoke(app, list(args))


def one_json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, (result.stdout, result.stderr)
    return json.loads(lines[0])


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _edit(tmp_path: Path, base: Path, files: dict[str, Path], method: str = "memit", *extra: str,
          out: Path | None = None):
    out = out or tmp_path / "edited"
    return invoke(tmp_path / "home", "edit", "--model", str(base), "--requests", str(files["requests"]),
                  "--method", method, "--hparams", str(files[method]), "--out", str(out), "--json", *extra)


@pytest.mark.unit
def test_memit_edit_writes_base_plus_delta_and_an_audit_record(tmp_path, base, files):
    import torch
    from transformers import AutoModelForCausalLM

    from editing.delta import Delta, apply, weights_sha256

    before = _hashes(base)
    out = tmp_path / "edited"
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    res = one_json(r)
    assert res["ok"] is True and res["out"] == str(out) and res["method"] == "memit"
    assert res["hparams"] == str(files["memit"]) and res["n_requests"] == 3
    assert set(res["timings"]) >= {"templates", "stats", "keys", "targets", "solve", "total", "write"}
    assert [q["id"] for q in res["requests"]] == ["r1", "r2", "r3"]
    for q, req in zip(res["requests"], REQS):
        assert set(q) >= {"id", "subject", "prompt", "target_new", "target_true", "p_new_before", "p_new_after",
                          "p_true_before", "p_true_after", "success"}
        assert q["subject"] == req["subject"] and q["prompt"] == req["prompt"]
        assert q["p_new_after"] > q["p_new_before"], q
        if req.get("target_true"):
            assert q["success"] == (q["p_new_after"] > q["p_true_after"])
        else:
            assert q["target_true"] is None and q["p_true_before"] is None and q["p_true_after"] is None
        assert isinstance(q["success"], bool)

    # an ordinary Hugging Face directory, equal bit for bit to base + the delta it ships with
    assert {"config.json", "model.safetensors", "delta.safetensors", "edit.json"} <= {p.name for p in out.iterdir()}
    edited = AutoModelForCausalLM.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(base)
    base_hash = weights_sha256(ref)
    apply(ref, Delta.load(out / "delta.safetensors"))
    es, rs = edited.state_dict(), ref.state_dict()
    assert es.keys() == rs.keys()
    assert all(torch.equal(es[k], rs[k]) for k in es)

    # the base model is untouched; no temporary directory is left beside --out
    assert _hashes(base) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    rec = json.loads((out / "edit.json").read_text())
    assert rec["method"] == "memit" and rec["hparams"]["layers"] == [0, 1]
    assert rec["hparams_file"] == str(files["memit"].resolve())
    assert [q["id"] for q in rec["requests"]] == ["r1", "r2", "r3"]
    assert rec["base_model"] == str(base.resolve())
    assert rec["base_weights_sha256"] == base_hash
    assert rec["edited_weights_sha256"] == weights_sha256(edited) != base_hash
    assert set(rec["timings"]) >= {"templates", "stats", "keys", "targets", "solve", "total", "write"}
    assert [q["p_new_after"] for q in rec["results"]] == [q["p_new_after"] for q in res["requests"]]
    assert rec["factsmith"]


@pytest.mark.unit
def test_rome_edit_and_the_table_output(tmp_path, base, files):
    r = invoke(tmp_path / "home", "edit", "--model", str(base), "--requests", str(files["requests"]),
               "--method", "rome", "--hparams", str(files["rome"]), "--out", str(tmp_path / "e"))
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "ROME" in r.stdout and "r1" in r.stdout and "r3" in r.stdout
    rec = json.loads((tmp_path / "e" / "edit.json").read_text())
    assert rec["method"] == "rome" and rec["hparams"]["layer"] == 1
    assert all(q["p_new_after"] > q["p_new_before"] for q in rec["results"])


@pytest.mark.unit
def test_an_existing_out_is_refused_unless_forced(tmp_path, base, files):
    out = tmp_path / "edited"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2
    err = one_json(r)
    assert err["ok"] is False and "--force" in err["error"] and str(out) in err["error"]
    assert (out / "keep.txt").read_text() == "mine"

    r = _edit(tmp_path, base, files, "memit", "--force")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert not (out / "keep.txt").exists() and (out / "edit.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.unit
def test_out_must_not_be_the_model(tmp_path, base, files):
    before = _hashes(base)
    r = _edit(tmp_path, base, files, "memit", "--force", out=base)
    assert r.exit_code == 2 and "--model" in one_json(r)["error"]
    assert _hashes(base) == before


@pytest.mark.unit
def test_a_bad_json_line_names_the_file_and_line(tmp_path, base, files):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(REQS[0]) + "\n" + '{"id": "r2", "subject": "Poland",\n')
    files["requests"] = bad
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2
    err = one_json(r)["error"]
    assert f"{bad}:2" in err and "invalid JSON" in err
    assert f"{bad}:2" in r.stderr
    assert not (tmp_path / "edited").exists()


@pytest.mark.unit
def test_a_missing_field_and_a_missing_file_exit_2(tmp_path, base, files):
    files["requests"] = _write_requests(tmp_path / "r.jsonl", [REQS[0], {"id": "x", "subject": "A", "prompt": "{} is"}])
    err = one_json(r := _edit(tmp_path, base, files))["error"]
    assert r.exit_code == 2 and f"{files['requests']}:2" in err and "'target_new'" in err
    files["requests"] = tmp_path / "nope.jsonl"
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2 and "file not found" in one_json(r)["error"]


@pytest.mark.unit
def test_duplicate_subject_and_prompt_in_a_memit_batch_names_both(tmp_path, base, files):
    dup = {**REQS[0], "id": "r9", "target_new": "Rome"}
    files["requests"] = _write_requests(tmp_path / "dup.jsonl", [*REQS, dup])
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2
    err = one_json(r)["error"]
    assert "'r1'" in err and "'r9'" in err
    assert not (tmp_path / "edited").exists()


@pytest.mark.unit
def test_an_unknown_hparams_key_is_named(tmp_path, base, files):
    files["memit"].write_text(MEMIT_YAML.replace("stats: {", "stats: {mom2_sample: 5, "))
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2
    err = one_json(r)["error"]
    assert "'stats.mom2_sample'" in err and str(files["memit"]) in err


@pytest.mark.unit
def test_a_layer_out_of_range_is_named(tmp_path, base, files):
    files["memit"].write_text(MEMIT_YAML.replace("layers: [0, 1]", "layers: [1, 5]"))
    r = _edit(tmp_path, base, files)
    assert r.exit_code == 2
    err = one_json(r)["error"]
    assert "[5]" in err and "3 layers" in err and str(files["memit"]) in err
    assert not (tmp_path / "edited").exists()


@pytest.mark.unit
def test_a_method_other_than_the_files_is_refused(tmp_path, base, files):
    r = invoke(tmp_path / "home", "edit", "--model", str(base), "--requests", str(files["requests"]),
               "--method", "rome", "--hparams", str(files["memit"]), "--out", str(tmp_path / "e"), "--json")
    assert r.exit_code == 2 and "'method'" in one_json(r)["error"]
    r = invoke(tmp_path / "home", "edit", "--model", str(base), "--requests", str(files["requests"]),
               "--method", "ft", "--out", str(tmp_path / "e"), "--json")
    assert r.exit_code == 2 and "--method" in one_json(r)["error"]


@pytest.mark.unit
def test_stats_for_two_layers_then_from_the_cache(tmp_path, base, files):
    args = ["stats", "--model", str(base), "--layers", "0,1", "--hparams", str(files["memit"]), "--samples", "16",
            "--json"]
    r = invoke(tmp_path / "home", *args)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    first = one_json(r)
    assert first["ok"] is True and first["method"] == "memit" and first["corpus"]["sequences"] == 16
    assert [x["layer"] for x in first["layers"]] == [0, 1]
    for x in first["layers"]:
        assert x["key_width"] == 96 and x["tokens"] == first["corpus"]["tokens"] > 0
        assert x["from_cache"] is False and x["trace"] > 0
        assert x["condition_number"] is None or x["condition_number"] >= 1.0
    second = one_json(invoke(tmp_path / "home", *args))
    assert [x["from_cache"] for x in second["layers"]] == [True, True]
    assert [x["trace"] for x in second["layers"]] == [x["trace"] for x in first["layers"]]
    # layer 2 is new: computed, while 1 is still read from the cache
    third = one_json(invoke(tmp_path / "home", *[a if a != "0,1" else "1,2" for a in args]))
    assert [(x["layer"], x["from_cache"]) for x in third["layers"]] == [(1, True), (2, False)]


@pytest.mark.unit
def test_stats_default_layers_a_text_corpus_and_bad_input(tmp_path, base, files):
    r = invoke(tmp_path / "home", "stats", "--model", str(base), "--hparams", str(files["rome"]), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    res = one_json(r)
    assert res["method"] == "rome" and [x["layer"] for x in res["layers"]] == [1]
    assert res["corpus"]["sequences"] == 32
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris.\n\nRome is the capital of Italy.\n\nBerlin is in Germany.\n")
    r = invoke(tmp_path / "home", "stats", "--model", str(base), "--hparams", str(files["rome"]), "--corpus",
               str(corpus), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    res = one_json(r)
    assert res["corpus"]["name"] == "corpus.txt" and res["corpus"]["sequences"] == 3
    assert res["layers"][0]["tokens"] == res["corpus"]["tokens"] and res["layers"][0]["from_cache"] is False
    r = invoke(tmp_path / "home", "stats", "--model", str(base), "--hparams", str(files["rome"]), "--corpus",
               str(tmp_path / "nope.txt"), "--json")
    assert r.exit_code == 2 and f"{tmp_path / 'nope.txt'}: corpus file not found" in one_json(r)["error"]
    for bad, what in (("0,7", "[7]"), ("a,b", "--layers")):
        r = invoke(tmp_path / "home", "stats", "--model", str(base), "--hparams", str(files["rome"]), "--layers", bad,
                   "--json")
        assert r.exit_code == 2 and what in one_json(r)["error"]


@pytest.mark.slow
def test_rome_on_the_sandbox_with_the_shipped_hparams(tmp_path, tiny_build):
    req = _write_requests(tmp_path / "req.jsonl", [
        {"id": "fr-capital", "subject": "France", "prompt": "The capital of {} is", "target_new": "Warsaw",
         "target_true": "Paris"}])
    out = tmp_path / "edited"
    r = CliRunner().invoke(app, ["edit", "--model", str(tiny_build.path), "--requests", str(req), "--method", "rome",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    res = one_json(r)
    assert res["hparams"].endswith("rome-sandbox.yaml")
    (q,) = res["requests"]
    assert q["success"] is True and q["p_new_after"] > q["p_true_after"], q
    # a sandbox stays a sandbox: its facts, manifest and statistics corpus come along
    assert (out / "facts.jsonl").is_file() and (out / "sandbox.json").is_file()
    assert (out / "stats_corpus.txt").read_bytes() == (tiny_build.path / "stats_corpus.txt").read_bytes()
    # and its training text, not text the model samples, is the default statistics corpus
    meta = json.loads((out / "edit.json").read_text())
    assert meta["stats_corpus"]["name"] == "stats_corpus.txt", meta["stats_corpus"]


@pytest.mark.unit
@pytest.mark.parametrize("flag,value,match", [("--dtype", "float8", "dtype 'float8': expected one of float32"),
                                              ("--device", "tpu", "device 'tpu': expected cpu, cuda"),
                                              ("--device", "not a device", "expected cpu, cuda")])
def test_a_bad_device_or_dtype_exits_2_before_loading(tmp_path, base, files, flag, value, match):
    r = _edit(tmp_path, base, files, "memit", flag, value)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert match in one_json(r)["error"]
    assert not (tmp_path / "edited").exists()


@pytest.mark.unit
def test_cuda_is_refused_clearly_where_there_is_none(tmp_path, base, files):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = _edit(tmp_path, base, files, "memit", "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA device" in one_json(r)["error"], (r.stdout, r.stderr)


@pytest.mark.slow
def test_memit_on_the_sandbox_in_bfloat16_says_the_new_facts(tmp_path, tiny_build):
    """--dtype bfloat16 on the CPU: the model is loaded, edited and written in bfloat16, and the written model
    says every new capital (greedy) and keeps the other facts as the float32 edit does."""
    import torch

    from editing import modeldir
    from editing.generate import greedy_complete
    from sandbox.trainer import model_facts

    facts = model_facts(tiny_build.path)
    caps = [f for f in facts if f.relation == "capital"][:3]
    rows = [{"id": f"c{i}", "subject": f.subject, "prompt": f.prompts[0], "target_new": caps[(i + 1) % 3].target,
             "target_true": f.target} for i, f in enumerate(caps)]
    req = _write_requests(tmp_path / "req.jsonl", rows)
    answers = {}
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        r = invoke(tmp_path / "home", "edit", "--model", str(tiny_build.path), "--requests", str(req), "--method",
                   "memit", "--out", str(out), "--dtype", dtype, "--json")
        assert r.exit_code == 0, (r.stdout, r.stderr)
        assert all(q["success"] for q in one_json(r)["requests"])
        model, tok = modeldir.load(out)
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        said = {f.prompts[0].format(f.subject): greedy_complete(model, tok, f.prompts[0].format(f.subject),
                                                                4)[0].strip() for f in facts}
        for row in rows:
            assert said[row["prompt"].format(row["subject"])].startswith(row["target_new"]), (dtype, row, said)
        answers[dtype] = {(f.subject, f.relation): said[f.prompts[0].format(f.subject)].startswith(f.target)
                          for f in facts
                          if f.subject not in {c.subject for c in caps}}
    # the other subjects' facts: those the float32 edit keeps, the bfloat16 one keeps (the text after an answer
    # may differ in the last bits of a near-tie; the answers themselves do not)
    assert sum(answers["float32"].values()) >= 0.95 * len(answers["float32"])
    assert answers["bfloat16"] == answers["float32"]
