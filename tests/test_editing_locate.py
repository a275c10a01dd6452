"""Causal tracing: shapes, hooks, the restoration property, determinism, errors; the sandbox's facts in
the first two layers' MLPs at the subject's last token; the ``factsmith locate`` command."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from editing.arch import n_layers, spec_for
from editing.locate import LocateError, clean_run, corrupted_probability, plot, prompt_positions, trace_subject

from .tiny_models import tiny_model

unit = pytest.mark.unit  # every test here but the two sandbox ones (slow)

WORDS = "the capital of france is paris united kingdom head state government poland warsaw".split()


def word_tokenizer(bos: bool):
    """A word-level tokenizer whose ids fit the tiny models' vocabulary; ``bos`` adds ``<s>`` in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>", pad_token="<s>")


# gpt2 without a BOS, llama with one: a piece-counting position lookup would be off by one on llama
CASES = {"gpt2": False, "llama": True}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    return tiny_model(request.param), word_tokenizer(CASES[request.param]), CASES[request.param]


PROMPT, SUBJECT = "the capital of {} is", "the united kingdom"


def no_hooks_anywhere(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@unit
def test_shapes_positions_and_json(tiny):
    model, tok, bos = tiny
    r = trace_subject(model, tok, PROMPT, SUBJECT, samples=3, noise=1.0)
    L, T = n_layers(model), len(r.tokens)
    assert r.tokens == (["<s>"] if bos else []) + "the capital of the united kingdom is".split()
    assert r.subject_span == ((4, 7) if bos else (3, 6))
    assert r.subject_last == r.subject_span[1] - 1 and r.tokens[r.subject_last] == "kingdom"
    assert set(r.scores) == {"mlp", "block"}
    for rows in r.scores.values():
        assert len(rows) == L and all(len(row) == T for row in rows)
    assert 0 <= r.corrupted_p <= 1 and 0 <= r.clean_p <= 1 and r.noise == 1.0
    j = json.loads(json.dumps(r.to_json()))
    assert j["subject_span"] == list(r.subject_span) and j["tokens"] == r.tokens
    assert j["best_layer"]["mlp"] == r.best_layer("mlp") and 0 <= j["best_layer"]["mlp"] < L
    assert j["at_subject_last"]["block"] == [row[r.subject_last] for row in r.scores["block"]]
    assert j["clean_p"] == r.clean_p and j["answer_id"] == r.answer_id
    assert no_hooks_anywhere(model)


@unit
def test_restoring_every_hidden_state_gives_back_the_clean_probability(tiny):
    model, tok, _ = tiny
    spec = spec_for(model)
    L = n_layers(model)
    _, ids, span, _ = prompt_positions(tok, PROMPT, SUBJECT)
    input_ids = torch.tensor(ids)
    T = len(ids)
    names = [spec.layer(i) for i in range(L)]
    probs, clean = clean_run(model, input_ids, names)
    answer = int(probs.argmax())
    noise = torch.randn((4, span[1] - span[0], model.config.hidden_size), generator=torch.Generator().manual_seed(1))
    everything = [(n, t) for n in names for t in range(T)]
    # three groups in one batch: nothing restored, everything restored, nothing restored
    p = corrupted_probability(model, input_ids, span, answer, noise, [[], everything, []], clean)
    clean_p = float(probs[answer])
    assert abs(float(p[0]) - clean_p) > 1e-4 * clean_p  # the noise changed something worth restoring
    torch.testing.assert_close(float(p[1]), clean_p, rtol=1e-5, atol=0)
    torch.testing.assert_close(float(p[2]), float(p[0]), rtol=1e-5, atol=0)
    # restoring only the subject's positions in layer 0 is not enough: later tokens saw the noise in layer 0
    part = corrupted_probability(model, input_ids, span, answer, noise, [[(names[0], t) for t in range(*span)]], clean)
    assert abs(float(part[0]) - clean_p) > 1e-4 * clean_p
    assert no_hooks_anywhere(model)


@unit
def test_heatmap_properties(tiny):
    model, tok, _ = tiny
    r = trace_subject(model, tok, PROMPT, SUBJECT, samples=4, noise=1.0)
    L, a = n_layers(model), r.subject_span[0]
    assert abs(r.clean_p - r.corrupted_p) > 1e-4 * r.clean_p
    for site in ("mlp", "block"):
        for layer in range(L):
            # tokens before the subject never see it (causal attention): restoring them changes nothing
            for t in range(a):
                assert r.scores[site][layer][t] == pytest.approx(r.corrupted_p, rel=1e-5)
    # the last layer's hidden state at the last position is all the logits read
    assert r.scores["block"][L - 1][-1] == pytest.approx(r.clean_p, rel=1e-5)
    # without noise every restoration is the clean run
    r0 = trace_subject(model, tok, PROMPT, SUBJECT, samples=2, noise=0.0)
    assert r0.corrupted_p == pytest.approx(r0.clean_p, rel=1e-5)
    assert all(v == pytest.approx(r0.clean_p, rel=1e-5) for rows in r0.scores.values() for row in rows for v in row)


@unit
def test_deterministic_for_a_seed(tiny):
    model, tok, _ = tiny
    a = trace_subject(model, tok, PROMPT, SUBJECT, samples=3, seed=7).to_json()
    b = trace_subject(model, tok, PROMPT, SUBJECT, samples=3, seed=7).to_json()
    c = trace_subject(model, tok, PROMPT, SUBJECT, samples=3, seed=8).to_json()
    assert a == b
    assert a["corrupted_p"] != c["corrupted_p"]
    assert a["noise"] == pytest.approx(3 * float(model.get_input_embeddings().weight.detach().std()))


@unit
def test_literal_prompt_and_target(tiny):
    model, tok, _ = tiny
    t = trace_subject(model, tok, PROMPT, SUBJECT, samples=2, noise=1.0)
    lit = trace_subject(model, tok, "the capital of the united kingdom is", SUBJECT, samples=2, noise=1.0)
    assert lit.to_json() == t.to_json()
    r = trace_subject(model, tok, PROMPT, SUBJECT, target="warsaw", samples=2, noise=1.0)
    assert r.answer_id == tok.convert_tokens_to_ids("warsaw") and r.target == "warsaw"
    assert r.tokens == t.tokens  # the target is measured, not fed
    assert r.clean_p == pytest.approx(float(clean_run(model, torch.tensor(tok(r.prompt).input_ids), [])[0][r.answer_id]))


@unit
def test_errors(tiny):
    model, tok, _ = tiny
    with pytest.raises(LocateError, match=r"subject 'poland' not found in the prompt 'the capital of france is'"):
        trace_subject(model, tok, "the capital of france is", "poland")
    with pytest.raises(ValueError, match="exactly one"):
        trace_subject(model, tok, "{} capital of {} is", "france")
    with pytest.raises(LocateError, match="samples: expected an integer >= 1, found 0"):
        trace_subject(model, tok, PROMPT, SUBJECT, samples=0)
    with pytest.raises(LocateError, match="noise"):
        trace_subject(model, tok, PROMPT, SUBJECT, noise=-1.0)
    with pytest.raises(LocateError, match="target"):
        trace_subject(model, tok, PROMPT, SUBJECT, target=" ")
    assert issubclass(LocateError, ValueError)
    assert no_hooks_anywhere(model)


@unit
def test_hooks_removed_and_model_unchanged_when_a_forward_raises(tiny, monkeypatch):
    model, tok, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = model.get_output_embeddings()
    calls = {"n": 0}
    forward = head.forward

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # clean run, corrupted run, then the first restoration (its hooks are in place)
            raise RuntimeError("boom")
        return forward(*args, **kwargs)

    monkeypatch.setattr(head, "forward", failing)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        trace_subject(model, tok, PROMPT, SUBJECT, samples=2)
    assert calls["n"] == 3
    assert no_hooks_anywhere(model)
    assert model.training  # the mode is given back
    model.eval()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@unit
def test_plot_writes_one_png_per_site(tiny, tmp_path):
    model, tok, _ = tiny
    r = trace_subject(model, tok, PROMPT, SUBJECT, samples=2, noise=1.0)
    files = plot(r, tmp_path / "png")
    assert set(files) == {"mlp", "block"}
    for f in files.values():
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@unit
def test_plot_without_matplotlib_says_it_is_needed(tiny, tmp_path, monkeypatch):
    model, tok, _ = tiny
    r = trace_subject(model, tok, PROMPT, SUBJECT, samples=1, noise=1.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(LocateError, match="matplotlib is needed"):
        plot(r, tmp_path)


# ----------------------------------------------------------------------------------------------------
# the command


def _invoke(*args):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["locate", *args])


def _json_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert len(lines) == 1, output
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_model("gpt2").save_pretrained(d)
    word_tokenizer(False).save_pretrained(d)
    return d


@unit
def test_cli_on_a_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "trace"
    res = _invoke("--model", str(tiny_dir), "--subject", "france", "--prompt", "the capital of {} is",
                  "--samples", "2", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    j = _json_line(res.output)
    assert j["ok"] and j["subject_span"] == [3, 4] and j["layers"] == 3 and j["samples"] == 2
    assert json.loads((out / "trace.json").read_text())["scores"] == j["scores"]
    assert {p.name for p in out.iterdir()} == {"trace.json", "mlp.png", "block.png"}
    # the table form names the PNGs
    res = _invoke("--model", str(tiny_dir), "--subject", "france", "--prompt", "the capital of {} is",
                  "--samples", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "mlp.png" in res.output and "block (hidden state)" in res.output


@unit
def test_cli_subject_absent_exits_2(tiny_dir, tmp_path):
    res = _invoke("--model", str(tiny_dir), "--subject", "poland", "--prompt", "the capital of france is",
                  "--out", str(tmp_path / "x"), "--json")
    assert res.exit_code == 2
    err = _json_line(res.output)
    assert err["ok"] is False and err["kind"] == "LocateError" and "'poland' not found" in err["error"]
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------
# the sandbox: trained so that facts sit in the MLPs of its first two layers at the subject's last token


def _sandbox(tiny_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_build.path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_build.path, local_files_only=True)
    return model, tok


@pytest.mark.slow
def test_sandbox_facts_live_in_the_first_two_mlps_at_the_subject_last_token(tiny_build):
    model, tok = _sandbox(tiny_build)
    knowledge = tiny_build.manifest["model"]["knowledge_layers"]
    assert knowledge == [0, 1]
    r = trace_subject(model, tok, "The capital of {} is", "France")
    assert r.answer.strip() == "Paris" and r.clean_p > 0.5 and r.corrupted_p < r.clean_p - 0.3
    assert r.best_layer("mlp") == 0
    # for every fact of a few subjects (main phrasing, the trained target): the best layer to restore is
    # a knowledge layer; the edited layer (1) gives back a clear share; the later layers give back little: under
    # 0.05, or under a quarter of the fact's best knowledge layer (builds differ from CPU to CPU: one of 20 facts
    # gave back 0.075 at layer 2, against 0.36 at layer 0, on a build where every other fact's gave < 0.05)
    rows = [json.loads(x) for x in (tiny_build.path / "facts.jsonl").read_text().splitlines() if x]
    rows = [f for f in rows if f["subject"] is not None][:20]
    traces = [trace_subject(model, tok, f["prompts"][0], f["subject"], f["target"], samples=5) for f in rows]
    gains = [[p - t.corrupted_p for p in t.at_subject_last("mlp")] for t in traces]
    assert all(t.best_layer("mlp") in knowledge for t in traces), [t.best_layer("mlp") for t in traces]
    assert sum(g[1] for g in gains) / len(gains) > 0.05
    assert all(max(g[2:]) < max(0.05, 0.25 * max(g[:2])) for g in gains), gains


@pytest.mark.slow
def test_cli_on_the_sandbox(tiny_build, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    exe = Path(sys.executable).parent / "factsmith"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    out = tmp_path / "locate"
    proc = subprocess.run([*cmd, "locate", "--model", str(tiny_build.path), "--subject", "France", "--prompt",
                           "The capital of {} is", "--out", str(out), "--json"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    j = _json_line(proc.stdout)
    assert j["answer"] == " Paris" and j["best_layer"]["mlp"] == 0
    assert j["tokens"][j["subject_last"]] == " France"
    assert (out / "mlp.png").stat().st_size > 0 and (out / "block.png").is_file()
    assert j["png"]["mlp"] == str(out / "mlp.png") and j["json"] == str(out / "trace.json")
