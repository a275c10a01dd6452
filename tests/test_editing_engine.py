"""ROME and MEMIT on tiny random models of every family: they raise p(target_new), computing an edit never
changes the model, deltas apply / revert exactly and round-trip through safetensors, batched target
optimisation equals one-at-a-time, statistics are cached by what determines them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editing import hparams as H
from editing.arch import spec_for
from editing.delta import Delta, apply, weights_sha256
from editing.engine import compute_edit
from editing.methods.memit import MemitHparams
from editing.methods.rome import RomeHparams
from editing.requests import EditRequest, RequestError
from editing.score import score_targets
from editing.stats import Corpus, compute_second_moments, second_moments, upstream_hash
from editing.store import Cache
from editing import targets as T
from editing.targets import _logits_at, optimize_targets

from .tiny_models import FAMILIES, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.unit

VOCAB = 320
# The subject ends each prompt: in a random model the last position barely attends to earlier tokens, so only
# an activation at the last prompt token can move the next-token distribution (trained models read the
# subject through attention; the sandbox tests cover that).
REQS = [
    EditRequest("France", "The capital of {}", "Warsaw", "Paris", id="r1"),
    EditRequest("Poland", "The head of state of {}", "Japanese", "Andrzej Duda", id="r2"),
    EditRequest("Japan", "The official language of {}", "Berlin", "Japanese", id="r3"),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(VOCAB)


def _small_hp(method: str, layers=(1,)):
    # A random init's activations are tiny (‖h‖ ≈ 0.03): the paper's decay ‖δ‖/‖h‖² and clamp 4‖h‖, tuned on
    # trained models, would forbid any edit here.
    target = H.TargetHparams(v_steps=25, v_lr=0.5, context_templates=((4, 2),), kl_factor=0.0625,
                             v_weight_decay=1e-4, clamp_norm_factor=1000.0)
    stats = H.StatsHparams(mom2_samples=64, sample_tokens=16)
    if method == "rome":
        return RomeHparams(layer=layers[-1], target=target, stats=stats)
    return MemitHparams(layers=tuple(layers), target=target, stats=stats, mom2_update_weight=10.0)


def _p(model, tok, reqs):
    return [s.logprob for s in score_targets(model, tok, [r.text for r in reqs], [r.target_new for r in reqs])]


@pytest.mark.parametrize("family", ["gpt2", "gptj", "gpt_neox", "llama"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_edit_raises_p_new_and_leaves_the_model_unchanged(family, method, tok, tmp_path):
    model = tiny_model(family, vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)  # a sharper random model
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    h0 = weights_sha256(model)
    hp = _small_hp(method, layers=(0, 1))
    p0 = _p(model, tok, REQS)
    res = compute_edit(model, tok, REQS, hp, Cache(tmp_path / "cache"))
    # computing the edit changed nothing, bit for bit
    assert weights_sha256(model) == h0
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())
    applied = apply(model, res.delta)
    p1 = _p(model, tok, REQS)
    assert all(b > a + 1.0 for a, b in zip(p0, p1)), (p0, p1)  # every request's log p(new) up by > 1 nat
    applied.revert()
    assert weights_sha256(model) == h0
    # metadata says what produced the delta
    assert res.delta.meta["method"] == method and res.delta.meta["base_weights_sha256"] == h0
    assert [r["id"] for r in res.delta.meta["requests"]] == ["r1", "r2", "r3"]
    assert set(res.timings) >= {"stats", "keys", "targets", "solve", "total"}


def test_delta_round_trip_gives_the_same_edited_model(tok, tmp_path):
    model = tiny_model("gpt2", vocab=VOCAB)
    res = compute_edit(model, tok, REQS[:2], _small_hp("memit", (0, 1)), Cache(tmp_path / "c"))
    res.delta.save(tmp_path / "d.safetensors")
    a = apply(model, res.delta)
    h_direct = weights_sha256(model)
    a.revert()
    b = apply(model, Delta.load(tmp_path / "d.safetensors"))
    assert weights_sha256(model) == h_direct
    b.revert()


def test_duplicate_subject_and_prompt_in_a_memit_batch_names_both(tok, tmp_path):
    model = tiny_model("gpt2", vocab=VOCAB)
    dup = [REQS[0], EditRequest("France", "The capital of {}", "Rome", id="r9")]
    with pytest.raises(RequestError, match=r"'r1' and 'r9'"):
        compute_edit(model, tok, dup, _small_hp("memit"), Cache(None))


def test_batched_targets_equal_one_at_a_time(tok):
    model = tiny_model("llama", vocab=VOCAB)
    hp = H.TargetHparams(v_steps=8, context_templates=())
    templates = ["{}", "Berlin is in Germany. {}"]
    name = "model.layers.1"
    together = optimize_targets(model, tok, name, REQS, templates, hp)
    for j, r in enumerate(REQS):
        alone = optimize_targets(model, tok, name, [r], templates, hp)
        assert alone.steps[0] == together.steps[j]
        assert torch.allclose(alone.delta[0], together.delta[j], atol=1e-4, rtol=1e-3)


def test_a_batch_streamed_in_chunks_equals_one_batch(tok, monkeypatch):
    """A batch larger than memory is optimised in chunks of requests, a subject's requests in one chunk: the same
    δ and steps as one batch (each request's loss depends on its own δ), progress after each chunk. Here the
    memory budget is set to fit two requests' rows, then the request cap to one."""
    import editing.targets as T

    model = tiny_model("llama", vocab=VOCAB)
    hp = H.TargetHparams(v_steps=8, context_templates=())
    templates = ["{}", "Berlin is in Germany. {}"]
    name = "model.layers.1"
    reqs = REQS + [EditRequest("France", "The official language of {}", "Berlin", id="r4")]  # France twice
    whole = optimize_targets(model, tok, name, reqs, templates, hp)
    assert whole.chunks == 1
    rows = T._rows(tok, reqs, templates, hp)
    per = [sum(len(r.ids) for r in rows if r.req == j) for j in range(len(reqs))]
    monkeypatch.setattr(T, "memory_budget", lambda _d: (per[0] + per[3] + 1) * T.bytes_per_position(model))
    seen = []
    streamed = optimize_targets(model, tok, name, reqs, templates, hp, progress=lambda a, b: seen.append((a, b)))
    capped = optimize_targets(model, tok, name, reqs, templates, dataclasses.replace(hp, chunk_requests=1),
                              progress=lambda a, b: seen.append((a, b)))
    monkeypatch.undo()
    # France's two requests together (the budget's first chunk), then Poland, then Japan; the cap of one request
    # still keeps France's two together
    assert streamed.chunks == 3 and capped.chunks == 3
    assert seen == [(2, 4), (3, 4), (4, 4)] * 2
    for tg in (streamed, capped):
        assert tg.steps == whole.steps
        assert torch.allclose(tg.delta, whole.delta, atol=1e-4, rtol=1e-3)
        assert torch.allclose(tg.init, whole.init, atol=1e-6)
    assert torch.equal(streamed.delta[0], streamed.delta[3])  # one subject, one δ


def test_request_chunks_keep_a_subject_together_within_the_budget():
    from editing.targets import request_chunks

    reqs = [EditRequest(s, "The capital of {}", "X", id=f"q{i}") for i, s in enumerate("ABACDE")]
    assert request_chunks(reqs, [10] * 6, 30) == [[0, 2, 1], [3, 4, 5]]
    assert request_chunks(reqs, [10] * 6, 15) == [[0, 2], [1], [3], [4], [5]]  # A's two exceed it: a chunk alone
    assert request_chunks(reqs, [10] * 6, 1000, max_requests=2) == [[0, 2], [1, 3], [4, 5]]
    assert request_chunks(reqs, [10] * 6, 1000) == [[0, 2, 1, 3, 4, 5]]


@pytest.mark.parametrize("family", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_logits_at_chosen_positions_are_the_full_logits_there(family):
    """v* reads logits at a few positions per row: those are exactly the full forward's logits there."""
    model = tiny_model(family, vocab=VOCAB).eval()
    ids = torch.randint(1, VOCAB, (3, 7))
    att = torch.ones_like(ids)
    att[2, 5:] = 0  # a right-padded row
    keep = torch.tensor([[0, 6], [3, 3], [4, 0]])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=att).logits
        some = _logits_at(model, ids, att, keep)
    assert some.shape == (3, 2, VOCAB)
    for b in range(3):
        for k in range(2):
            assert torch.allclose(some[b, k], full[b, keep[b, k]], atol=1e-5)
    mask = torch.zeros_like(ids, dtype=torch.bool)  # or a mask: its positions flat, in row-major order
    mask[0, [1, 6]] = mask[2, 4] = True
    with torch.no_grad():
        flat = _logits_at(model, ids, att, mask)
    assert flat.shape == (3, VOCAB)
    assert torch.allclose(flat, torch.stack([full[0, 1], full[0, 6], full[2, 4]]), atol=1e-5)


@pytest.mark.parametrize("at", ["block", "mlp_out"])
@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_cached_prefix_gives_the_full_forwards_logits(family, bos, at, tok):
    """δ is added at the subject's last token, so the positions before it are run once and cached, and so are
    the blocks up to δ's on the rest; a step then runs the blocks above on the rest of each row. Its logits are
    the full forward's, with δ on a block's output (MEMIT's z) or on its MLP's (ROME's v), on every family, with
    a BOS token or without (rows of different prefix and suffix lengths, padded in one chunk)."""
    from editing.arch import spec_for

    model = tiny_model(family, vocab=VOCAB, init_range=0.2)
    reqs = REQS + [EditRequest("Japan", "{} is the home of", "Paris", "Japanese", id="r4",
                               keep_prompts=("The capital of {} is",))]
    rows = T._rows(tok, reqs, ["{}", "Berlin is in Germany. {}"], H.TargetHparams(essence_prompts=("{} is a",)))
    if bos:
        rows = [T.Row([0] + r.ids, r.subj + 1, r.start + 1, r.req, r.kind) for r in rows]
    assert len({r.subj for r in rows}) > 2 and len({len(r.ids) - r.subj for r in rows}) > 2
    kl = {id(r): torch.zeros(VOCAB) for r in rows}, {id(r): 1.0 for r in rows}
    kw = T.cache_kw(model)
    spec = spec_for(model)
    name = spec.layer(1) if at == "block" else spec.mlp_out_at(1)
    below = T._below(model, name)
    assert kw is not None and below is not None and below.upto == 1
    full = T._chunk(rows, 0, "cpu", *kl)
    cached = T._chunk(rows, 0, "cpu", *kl, model, kw)
    replayed = T._chunk(rows, 0, "cpu", *kl, model, kw, below)
    assert replayed.pre.hidden is not None and cached.pre.hidden is None
    delta = torch.randn(len(rows), model.config.hidden_size)
    blocks = list(below.blocks)
    out = []
    for c, k, b in ((full, None, None), (cached, kw, None), (replayed, kw, below), (replayed, kw, below)):
        def add(_n, h, c=c):
            return h.index_put((c.bix, c.six), delta.to(h.dtype), accumulate=True)

        with torch.no_grad():
            out.append(T._chunk_logits(model, c, k, name, add, b))
    # the entries a step reads: every target token of a rewrite row, the last prompt token of the others
    assert out[0].shape == (sum(len(r.ids) - r.start if r.kind == "rewrite" else 1 for r in rows), VOCAB)
    assert out[0].abs().max() > 1.0  # logits that the δ and the weights move
    assert torch.allclose(out[1], out[0], atol=1e-4)
    assert torch.allclose(out[2], out[0], atol=1e-4)
    # a step runs a rewrite row up to its last target token only: nothing reads that position
    assert cached.pre.ids.shape[1] == max(len(r.ids) - r.subj - (r.kind == "rewrite") for r in rows)
    assert torch.equal(out[3], out[2])  # a step leaves the cache as it was
    assert list(below.blocks) == blocks  # and the model's blocks
    # rows left over from two passes (their own prefix and suffix lengths) run as one: the same logits
    by_len = sorted(range(len(rows)), key=lambda i: len(rows[i].ids) - rows[i].subj)
    halves = [by_len[: len(rows) // 2], by_len[len(rows) // 2:]]
    parts = [T._chunk([rows[i] for i in h], 0, "cpu", *kl, model, kw, below) for h in halves]
    assert parts[0].pre.ids.shape != parts[1].pre.ids.shape or parts[0].pre.att.shape != parts[1].pre.att.shape
    merged = T._merge([T._select(parts[0], [True] * len(halves[0])), parts[1]])
    assert [id(r) for r in merged.rows] == [id(rows[i]) for i in halves[0] + halves[1]]

    def add_m(_n, h):
        return h.index_put((merged.bix, merged.six), delta[halves[0] + halves[1]].to(h.dtype), accumulate=True)

    with torch.no_grad():
        got = T._chunk_logits(model, merged, kw, name, add_m, below)
    idx = torch.cat([(full.frow == i).nonzero().squeeze(1) for i in halves[0] + halves[1]])
    assert len(idx) == len(got) == len(full.frow)
    assert torch.allclose(got, out[0][idx], atol=1e-4)


def _held_and_repeated_rows(model, tok):
    """Rows of REQS and of a request whose keep prompt names its subject again and whose target does, with the
    keep rows' 3-token answers appended and the repeats marked."""
    reqs = REQS + [EditRequest("Japan", "{} is the home of", "Japan Paris", "Japanese", id="r4",
                               keep_prompts=("The capital of {} is not Japan", "The head of state of {}"))]
    hp = H.TargetHparams(essence_prompts=("{} is a",), keep_tokens=3, delta_at_repeats=True)
    rows = T._rows(tok, reqs, ["{}", "Berlin is in Germany. {}"], hp)
    rows = T._with_repeats(tok, T._with_answers(model, rows, 3, 0, "cpu", 256), reqs)
    return reqs, rows


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_held_answer_tokens_and_repeats_give_the_full_forwards_logits(family, tok):
    """A keep row holds its first answer tokens (teacher-forced on the model's own greedy answer) and δ is added
    also where the subject is named again: the cached prefix, the replayed blocks and rows merged from two passes
    still give the full forward's logits, one entry per held token, δ at every marked position."""
    from editing.arch import spec_for

    model = tiny_model(family, vocab=VOCAB, init_range=0.2)
    reqs, rows = _held_and_repeated_rows(model, tok)
    keep = [r for r in rows if r.kind == "keep"]
    assert keep and all(len(r.ids) == r.start + 2 for r in keep)  # 3 held tokens: 2 of them appended
    with torch.no_grad():  # the appended tokens are the model's greedy answer
        for r in keep:
            for q in (r.start, r.start + 1):
                assert int(model(input_ids=torch.tensor([r.ids[:q]])).logits[0, -1].argmax()) == r.ids[q]
    marked = [r for r in rows if r.repeats]
    assert {r.kind for r in marked} == {"keep", "rewrite"}  # the keep prompt's "... not Japan", the target "Japan Paris"
    for r in marked:
        assert all(q > r.subj for q in r.repeats)
        assert all(tok.decode(r.ids[:q + 1]).endswith("Japan") for q in r.repeats)
    kl = ({id(r): torch.randn(len(r.ids) - r.start + 1 if r.kind != "rewrite" else 1, VOCAB).log_softmax(-1)
           for r in rows}, {id(r): 1.0 for r in rows})
    kw = T.cache_kw(model)
    name = spec_for(model).layer(1)
    below = T._below(model, name)
    full = T._chunk(rows, 0, "cpu", *kl)
    cached = T._chunk(rows, 0, "cpu", *kl, model, kw)
    replayed = T._chunk(rows, 0, "cpu", *kl, model, kw, below)
    assert len(full.eb) == sum(len(r.ids) - r.start + 1 for r in rows if r.kind != "rewrite")
    assert len(full.xb) == sum(sum(q < len(r.ids) - (r.kind == "rewrite") for q in r.repeats) for r in rows) > 0
    delta = torch.randn(len(reqs), model.config.hidden_size)

    def add_for(c):
        def add(_n, h):
            out = h.index_put((c.bix, c.six), delta[c.rix].to(h.dtype), accumulate=True)
            return out.index_put((c.xb, c.xs), delta[c.xr].to(h.dtype), accumulate=True)
        return add

    with torch.no_grad():
        out = [T._chunk_logits(model, c, k, name, add_for(c), b)
               for c, k, b in ((full, None, None), (cached, kw, None), (replayed, kw, below))]
        bare = T._chunk_logits(model, full, None, name,
                               lambda _n, h: h.index_put((full.bix, full.six), delta[full.rix].to(h.dtype),
                                                         accumulate=True))
    assert not torch.allclose(bare, out[0], atol=1e-3)  # the repeats' δ moves the logits
    assert torch.allclose(out[1], out[0], atol=1e-4) and torch.allclose(out[2], out[0], atol=1e-4)
    by_len = sorted(range(len(rows)), key=lambda i: len(rows[i].ids) - rows[i].subj)
    halves = [by_len[: len(rows) // 2], by_len[len(rows) // 2:]]
    parts = [T._chunk([rows[i] for i in h], 0, "cpu", *kl, model, kw, below) for h in halves]
    live = [i % 3 != 0 for i in range(len(halves[0]))]  # a third of the first pass's rows leave
    merged = T._merge([T._select(parts[0], live), parts[1]])
    kept = [i for i, x in zip(halves[0], live) if x] + halves[1]
    assert [id(r) for r in merged.rows] == [id(rows[i]) for i in kept]
    with torch.no_grad():
        got = T._chunk_logits(model, merged, kw, name, add_for(merged), below)
    idx = torch.cat([(full.frow == i).nonzero().squeeze(1) for i in kept])
    assert len(got) == len(idx) and torch.allclose(got, out[0][idx], atol=1e-4)
    assert len(merged.eb) == sum(len(rows[i].ids) - rows[i].start + 1 for i in kept if rows[i].kind != "rewrite")


def test_targets_that_hold_answers_and_repeats_with_the_cached_prefix_are_those_of_the_whole_rows(tok):
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    reqs, _ = _held_and_repeated_rows(model, tok)
    hp = H.TargetHparams(v_steps=12, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                         keep_tokens=3, delta_at_repeats=True, keep_lead=1.0, stop="argmax")
    templates = ["{}", "Berlin is in Germany. {}"]
    a = optimize_targets(model, tok, "transformer.h.1", reqs, templates, hp)
    b = optimize_targets(model, tok, "transformer.h.1", reqs, templates, dataclasses.replace(hp, prefix_cache=False))
    assert a.steps == b.steps and a.delta.norm() > 0
    assert torch.allclose(a.delta, b.delta, atol=1e-4, rtol=1e-3)
    c = optimize_targets(model, tok, "transformer.h.1", reqs, templates, dataclasses.replace(hp, delta_at_repeats=False))
    assert not torch.allclose(a.delta, c.delta, atol=1e-4)  # the repeats take part
    with pytest.raises(H.HparamsError, match="keep_tokens"):
        H.TargetHparams(keep_tokens=0)
    with pytest.raises(H.HparamsError, match="keep_lead"):
        H.TargetHparams(keep_lead=-1.0)


def test_rows_are_cut_into_passes_where_padding_costs_most():
    rows = [T.Row([1] * n, 0, n, 0, "keep") for n in [2] * 40 + [3] * 30 + [9] * 5 + [10] * 2]
    length = lambda r: len(r.ids)  # noqa: E731
    cost = lambda cs, o: sum(len(c) * max(map(length, c)) + o for c in cs)  # noqa: E731
    for size, overhead in ((256, 64), (16, 8), (256, 0), (256, 10_000)):
        cut = T._by_length(rows, size, length, overhead)
        assert sorted(map(id, sum(cut, []))) == sorted(map(id, rows)) and max(map(len, cut)) <= size
        assert cost(cut, overhead) <= cost(T._batches(rows, size), overhead)
    assert [len(c) for c in T._by_length(rows, 256, length, 64)] == [70, 7]  # the long rows apart
    assert len(T._by_length(rows, 256, length, 10_000)) == 1  # a pass costs more than any padding
    assert T._by_length([], 8, length) == []


def test_targets_with_the_cached_prefix_are_those_of_the_whole_rows(tok):
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = H.TargetHparams(v_steps=12, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0)
    templates = ["{}", "Berlin is in Germany. {}"]
    a = optimize_targets(model, tok, "transformer.h.1", REQS, templates, hp)
    b = optimize_targets(model, tok, "transformer.h.1", REQS, templates, dataclasses.replace(hp, prefix_cache=False))
    assert a.steps == b.steps and a.delta.norm() > 0
    assert torch.allclose(a.delta, b.delta, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_attention_kernel_of_the_steps_changes_nothing_but_speed(family, tok):
    """``target.attention`` picks the kernel of the steps (the sandbox presets: eager); the targets are those of
    the model's own kernel, and the model has its own again afterwards."""
    model = tiny_model(family, vocab=VOCAB, init_range=0.2)
    own = model.config._attn_implementation
    hp = H.TargetHparams(v_steps=12, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0)
    templates = ["{}", "Berlin is in Germany. {}"]
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    a = optimize_targets(model, tok, spec_for(model).layer(1), REQS, templates, hp)
    b = optimize_targets(model, tok, spec_for(model).layer(1), REQS, templates,
                         dataclasses.replace(hp, attention="eager" if own != "eager" else "sdpa"))
    hook.remove()
    assert set(seen) == {own, "eager" if own != "eager" else "sdpa"}
    assert model.config._attn_implementation == own
    assert a.steps == b.steps and a.delta.norm() > 0
    assert torch.allclose(a.delta, b.delta, atol=1e-4, rtol=1e-3)
    with pytest.raises(H.HparamsError, match="attention"):
        H.TargetHparams(attention="flash")


def test_requests_that_stop_early_leave_the_batch(tok):
    """Requests stopping at different steps: each δ is still its own optimisation's, and a stopped request's
    prompts leave the forward passes, so the batch forwards exactly the rows its requests would alone."""
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = H.TargetHparams(v_steps=30, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                         early_stop_loss=4.5)
    templates = ["{}", "Berlin is in Germany. {}"]
    rows = [0]
    def count(_m, _a, kw):  # the rows of the optimisation steps (not the no-grad passes: pass 0, cached prefixes)
        if torch.is_grad_enabled():
            rows[0] += len(kw["input_ids"])

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    together = optimize_targets(model, tok, "transformer.h.1", REQS, templates, hp)
    batched_rows, rows[0] = rows[0], 0
    assert len(set(together.steps)) == 3 and max(together.steps) == hp.v_steps  # [4, 30, 6]
    for j, r in enumerate(REQS):
        alone = optimize_targets(model, tok, "transformer.h.1", [r], templates, hp)
        assert alone.steps[0] == together.steps[j]
        assert torch.allclose(alone.delta[0], together.delta[j], atol=1e-4, rtol=1e-3)
    hook.remove()
    assert batched_rows == rows[0]  # without leaving, 3 x 30 steps of every row: more than twice as many


def test_the_last_requests_run_in_fewer_passes_with_the_same_targets(tok, monkeypatch):
    """Rows left over when requests stop are merged into fewer passes (each pass pays an overhead): the same
    steps and targets as in the passes they were planned in."""
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = H.TargetHparams(v_steps=30, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                         early_stop_loss=4.5, batch_prompts=6)
    templates = ["{}", "Berlin is in Germany. {}"]
    reqs = REQS + [EditRequest("Japan", "{} is the home of", "Paris", "Japanese", id="r4")]
    passes = [0]

    def count(_m, _a):
        if torch.is_grad_enabled():
            passes[0] += 1

    hook = model.register_forward_pre_hook(count)
    merged = optimize_targets(model, tok, "transformer.h.1", reqs, templates, hp)
    n_merged, passes[0] = passes[0], 0
    monkeypatch.setattr(T, "_coalesce", lambda chunks, size: chunks)
    apart = optimize_targets(model, tok, "transformer.h.1", reqs, templates, hp)
    hook.remove()
    assert len(set(merged.steps)) > 1  # requests stopped at different steps
    assert merged.steps == apart.steps
    assert torch.allclose(merged.delta, apart.delta, atol=1e-4, rtol=1e-3)
    assert n_merged < passes[0]  # 3 passes a step before the first request stopped, 2 after it (not 3)


def test_requests_about_one_subject_share_one_target_vector(tok):
    """Two relations of one subject have one key: one δ, optimised on both losses, not two contradictory ones."""
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = H.TargetHparams(v_steps=30, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0)
    pair = [EditRequest("Poland", "The capital of {}", "Berlin", id="a"),
            EditRequest("Poland", "The head of state of {}", "Japanese", id="b")]
    together = optimize_targets(model, tok, "transformer.h.1", pair + [REQS[0]], ["{}"], hp)
    assert torch.equal(together.delta[0], together.delta[1])
    assert not torch.equal(together.delta[0], together.delta[2])
    assert together.steps[0] == together.steps[1]
    # France's row is optimised exactly as on its own; Poland's joint δ is neither request's own δ
    alone = optimize_targets(model, tok, "transformer.h.1", [REQS[0]], ["{}"], hp)
    assert torch.allclose(alone.delta[0], together.delta[2], atol=1e-4, rtol=1e-3)
    first = optimize_targets(model, tok, "transformer.h.1", pair[:1], ["{}"], hp)
    assert not torch.allclose(first.delta[0], together.delta[0], atol=1e-3)
    # and the joint δ serves both: each target's NLL falls from where δ = 0 leaves it
    start = optimize_targets(model, tok, "transformer.h.1", pair, ["{}"], H.TargetHparams(v_steps=1, context_templates=()))
    assert together.nll[0] < start.nll[0] and together.nll[1] < start.nll[1]


def test_early_stop_freezes_a_converged_request(tok):
    model = tiny_model("gpt2", vocab=VOCAB)
    hp = H.TargetHparams(v_steps=30, early_stop_loss=1e9, context_templates=())  # everything converges at once
    tg = optimize_targets(model, tok, "transformer.h.1", REQS, ["{}"], hp)
    assert tg.steps == [1, 1, 1] and float(tg.delta.abs().max()) == 0.0


def _says_with_delta(model, tok, name, req: EditRequest, template: str, delta: torch.Tensor) -> bool:
    """Greedy decoding of ``template`` (a context around the request's prompt) with δ added at the subject's last
    token gives the target's tokens: what the argmax stop promises."""
    return _with_delta(model, tok, name, req, template, delta)[0]


def _with_delta(model, tok, name, req: EditRequest, template: str, delta: torch.Tensor) -> tuple[bool, float]:
    """(greedy says the target, log p(target)) with δ added at the subject's last token."""
    from editing.hooks import Trace
    from editing.targets import _with_prefix
    from editing.tokens import encode_edit

    ids, subj, start = encode_edit(tok, _with_prefix(template, req.prompt), req.subject, req.target_new)

    def add(_n, h):
        return h.index_put((torch.tensor([0]), torch.tensor([subj])), delta.to(h.dtype)[None], accumulate=True)

    with torch.no_grad(), Trace(model, [name], edit_output=add, retain_output=False):
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)  # (T, V)
    pred = logp.argmax(-1)
    return (all(int(pred[j - 1]) == ids[j] for j in range(start, len(ids))),
            float(sum(logp[j - 1, ids[j]] for j in range(start, len(ids)))))


def test_argmax_stop_ends_when_every_row_says_the_target(tok):
    # one-token targets: in a random model δ at the subject (the last prompt token) reaches the first answer
    # token only, so a longer target can never be all argmax
    reqs = [EditRequest("France", "The capital of {}", "Japan", id="a"),
            EditRequest("Poland", "The head of state of {}", "is", id="b")]
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    templates = ["{}", "Berlin is in Germany. {}"]
    hp = H.TargetHparams(v_steps=100, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                         stop="argmax", kl_factor=0.0)
    tg = optimize_targets(model, tok, "transformer.h.1", reqs, templates, hp)
    assert all(1 < s < hp.v_steps for s in tg.steps), tg.steps
    for j, r in enumerate(reqs):
        assert all(_says_with_delta(model, tok, "transformer.h.1", r, t, tg.delta[j]) for t in templates)
        if tg.steps[j] > 1:  # one step less had not got there: the stop is the first step that does
            early = optimize_targets(model, tok, "transformer.h.1", [r], templates,
                                     dataclasses.replace(hp, v_steps=tg.steps[j] - 1))
            assert not all(_says_with_delta(model, tok, "transformer.h.1", r, t, early.delta[0]) for t in templates)


def test_plateau_stop_ends_a_subject_whose_loss_no_longer_falls(tok):
    """A margin the optimisation cannot reach (here a two-token target, whose second token δ at the last prompt
    token of a random model never reaches): argmax alone runs every step; with the plateau stop the subject ends
    at the first step its loss fell by less than plateau_gain over plateau_steps, on the same trajectory."""
    req = EditRequest("France", "The capital of {}", "Japanese", id="a")
    assert len(tok.encode(" Japanese")) >= 2
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    name, templates = "transformer.h.1", ["{}"]
    hp = H.TargetHparams(v_steps=120, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                         stop="argmax", kl_factor=0.0)
    capped = optimize_targets(model, tok, name, [req], templates, hp)
    assert capped.steps == [hp.v_steps]
    flat = dataclasses.replace(hp, plateau_steps=10, plateau_gain=0.05)
    tg = optimize_targets(model, tok, name, [req], templates, flat)
    assert flat.plateau_steps < tg.steps[0] < hp.v_steps, tg.steps
    # the same trajectory cut short: a run capped at that step ends with the same δ
    cut = optimize_targets(model, tok, name, [req], templates, dataclasses.replace(hp, v_steps=tg.steps[0]))
    assert torch.allclose(cut.delta, tg.delta, atol=1e-6)
    # and the loss had stalled there: the last plateau_steps steps of the capped run's curve, relative
    stalled = optimize_targets(model, tok, name, [req], templates, dataclasses.replace(flat, plateau_gain=0.0))
    assert stalled.steps[0] > tg.steps[0]  # a stricter plateau runs on


def test_keep_prompts_hold_the_subjects_other_answers(tok):
    """A keep prompt's next-token distribution moves less when the target optimisation keeps it; a rewrite prompt
    joins the optimisation as a row of its own (its target's NLL falls with it)."""
    from editing.hooks import Trace
    from editing.tokens import encode_edit

    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    name = "transformer.h.1"
    keep = "The head of state of {}"
    plain = EditRequest("France", "The capital of {}", "Japan", id="k")
    kept = EditRequest("France", "The capital of {}", "Japan", id="k", keep_prompts=(keep,))
    base = H.TargetHparams(v_steps=25, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                           kl_factor=0.0, keep_factor=4.0)

    def drift(delta: torch.Tensor) -> float:
        ids, subj, _ = encode_edit(tok, keep, "France")
        x = torch.tensor([ids])
        with torch.no_grad():
            before = torch.log_softmax(model(input_ids=x).logits[0, -1], -1)
            add = lambda _n, h: h.index_put((torch.tensor([0]), torch.tensor([subj])), delta[None], accumulate=True)
            with Trace(model, [name], edit_output=add, retain_output=False):
                after = torch.log_softmax(model(input_ids=x).logits[0, -1], -1)
        return float((before.exp() * (before - after)).sum())

    free = optimize_targets(model, tok, name, [plain], ["{}"], base)
    held = optimize_targets(model, tok, name, [kept], ["{}"], base)
    assert drift(held.delta[0]) < 0.5 * drift(free.delta[0])
    # a rewrite prompt is trained too
    other = "Name the city that is the capital of {}"  # the subject last again: a random model reads it there
    extra = optimize_targets(model, tok, name, [EditRequest("France", "The capital of {}", "Japan",
                                                            rewrite_prompts=(other,))], ["{}"], base)
    probe = EditRequest("France", other, "Japan")
    assert _with_delta(model, tok, name, probe, "{}", extra.delta[0])[1] > \
        _with_delta(model, tok, name, probe, "{}", free.delta[0])[1]
    with pytest.raises(RequestError, match="keep_prompts"):
        EditRequest("France", "The capital of {}", "Warsaw", keep_prompts=("no placeholder",))


def test_keep_tokens_hold_a_keep_prompts_later_answer_tokens_and_keep_lead_its_margin(tok):
    """keep_tokens 3 holds the distribution at a keep prompt's 2nd and 3rd answer tokens (teacher-forced on the
    model's own greedy answer), which keep_tokens 1 leaves free; keep_lead makes the first answer token keep a
    lead over its runner-up (the smaller of keep_lead and its lead before the edit) where argmax alone does not."""
    from editing.hooks import Trace
    from editing.tokens import encode_edit

    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    name = "transformer.h.1"
    keep = "The head of state of {}"
    req = EditRequest("France", "The capital of {}", "Japan", id="k", keep_prompts=(keep,))
    base = H.TargetHparams(v_steps=40, v_lr=0.5, context_templates=(), v_weight_decay=1e-4, clamp_norm_factor=1000.0,
                           kl_factor=0.0, keep_factor=4.0, stop="argmax")
    ids, subj, _ = encode_edit(tok, keep, "France")
    with torch.no_grad():
        for _ in range(2):  # the model's greedy answer, 2 tokens of it
            ids = ids + [int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
    n_prompt = len(ids) - 2

    def logp(delta):  # (3, V) at the last prompt token and the two answer tokens after it
        x = torch.tensor([ids])
        add = (lambda _n, h: h.index_put((torch.tensor([0]), torch.tensor([subj])), delta[None], accumulate=True)
               if delta is not None else h)
        with torch.no_grad(), Trace(model, [name], edit_output=add, retain_output=False):
            return torch.log_softmax(model(input_ids=x).logits[0, n_prompt - 1:], -1)

    before = logp(None)

    def drift(delta):  # KL(before || after) at each of the three positions
        after = logp(delta)
        return (before.exp() * (before - after)).sum(-1)

    one = optimize_targets(model, tok, name, [req], ["{}"], base)
    three = optimize_targets(model, tok, name, [req], ["{}"], dataclasses.replace(base, keep_tokens=3))
    d1, d3 = drift(one.delta[0]), drift(three.delta[0])
    assert float(d3[1:].sum()) < 0.5 * float(d1[1:].sum())

    def lead(lp):
        top = lp[0].topk(2).values
        return float(top[0] - top[1])

    need = min(2.0, lead(before))
    led = optimize_targets(model, tok, name, [req], ["{}"], dataclasses.replace(base, keep_lead=2.0))
    after_led, after_one = logp(led.delta[0]), logp(one.delta[0])
    assert after_led[0].argmax() == before[0].argmax() and lead(after_led) >= need - 0.02
    assert lead(after_one) < need  # argmax alone stopped with less


def test_memit_reports_and_raises_the_realised_share_of_each_target(tok, tmp_path):
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = _small_hp("memit", layers=(1,))
    hp = H.from_dict("memit", {**H.to_dict(hp), "mom2_update_weight": 2000.0})  # a λ that realises little
    once = compute_edit(model, tok, REQS, hp, Cache(tmp_path / "c")).details
    assert len(once["realized"]) == 3 and max(once["realized"]) < 0.9 and once["realize_rounds"] == 0
    hp3 = H.from_dict("memit", {**H.to_dict(hp), "realize_rounds": 3, "min_realized": 0.95})
    again = compute_edit(model, tok, REQS, hp3, Cache(tmp_path / "c")).details
    assert again["realize_rounds"] >= 1
    assert all(b > a for a, b in zip(once["realized"], again["realized"]))


def test_raised_target_rounds_solve_the_first_layer_once_and_give_a_fresh_solves_update(tok, tmp_path,
                                                                                          monkeypatch):
    # every round's updates are reverted, so the first edited layer's keys, and its V = A^-1 K, are round 0's:
    # a raised-target round solves only the layers above it (a d_k x d_k float64 solve each)
    from editing.methods.memit import solve as memit_solve
    from editing.targets import keys

    real, seen = memit_solve.layer_update, []

    def counting(resid, K, cov, lam, ridge=0.0):
        seen.append((K.shape, cov, lam, ridge))
        return real(resid, K, cov, lam, ridge)

    monkeypatch.setattr(memit_solve, "layer_update", counting)
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    base = {**H.to_dict(_small_hp("memit", layers=(0, 1))), "mom2_update_weight": 2000.0, "min_realized": 0.95,
            "realize_rounds": 3}
    res = compute_edit(model, tok, REQS, H.from_dict("memit", base), Cache(tmp_path / "c"))
    rounds = res.details["realize_rounds"]
    assert rounds >= 1 and len(seen) == 1 + (rounds + 1)  # layer 0 once, layer 1 in every round
    # the update is what solving layer 0 afresh for the last round's residuals gives, bit for bit
    name = spec_for(model).mlp_out_at(0)
    ld = res.delta.layers[name]
    K = keys(model, tok, name, REQS, res.delta.meta["context_templates"]).T.cpu()
    _, cov, lam, ridge = seen[0]
    assert torch.equal(real(ld.U, K, cov, lam, ridge).V, ld.V)
    seen.clear()
    one = compute_edit(model, tok, REQS, H.from_dict("memit", {**base, "layers": [1]}), Cache(tmp_path / "c"))
    assert one.details["realize_rounds"] >= 1 and len(seen) == 1


def test_memit_raises_a_target_at_most_max_target_gain_in_all(tok, tmp_path):
    # one edited layer: the update's U column of a request is its solved residual, (its target's factor) x (z - h)
    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = H.to_dict(_small_hp("memit", layers=(1,)))
    hp.update({"mom2_update_weight": 2000.0, "min_realized": 0.95})  # a λ that realises little

    def columns(**over):
        res = compute_edit(model, tok, REQS, H.from_dict("memit", {**hp, **over}), Cache(tmp_path / "c"))
        [ld] = res.delta.layers.values()
        return ld.U.norm(dim=0), res.details

    once, d0 = columns(realize_rounds=0)
    capped, d1 = columns(realize_rounds=3, max_target_gain=1.5)
    free, d2 = columns(realize_rounds=3, max_target_gain=100.0)
    assert d1["realize_rounds"] >= 1 and d2["realize_rounds"] > d1["realize_rounds"]
    assert torch.all(capped <= 1.5 * once * (1 + 1e-4)) and torch.any(capped > 1.2 * once)
    assert torch.any(free > 1.5 * once * 1.1)  # without the cap the same rounds go past it
    assert all(b > a for a, b in zip(d0["realized"], d1["realized"]))
    same, d3 = columns(realize_rounds=3, max_target_gain=1.0)  # a cap of 1: nothing to raise
    assert d3["realize_rounds"] == 0 and torch.allclose(same, once)
    with pytest.raises(H.HparamsError, match="max_target_gain"):
        H.from_dict("memit", {**hp, "max_target_gain": 0.5})


def test_a_target_said_by_a_hair_is_raised_by_half_while_its_lead_stays_below_min_lead(tok, tmp_path, monkeypatch):
    # one edited layer, a λ that realises everything asked: only the lead can call for another round. The leads
    # are set (editing.targets.target_leads is tested on its own): said by a hair (0.5), said well (2.0), not
    # said (-1.0). Only the first is raised, by half a round (1, 1.5, then 2.0, the cap) and no further
    from editing.methods.memit import solve as memit_solve

    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = {**H.to_dict(_small_hp("memit", layers=(1,))), "mom2_update_weight": 1e-3, "min_realized": 0.0,
          "realize_rounds": 3, "max_target_gain": 2.0}
    calls = []

    def leads(model, tokenizer, requests):
        calls.append(len(requests))
        return torch.tensor([0.5, 2.0, -1.0])

    monkeypatch.setattr(memit_solve, "target_leads", leads)

    def edit(**over):
        res = compute_edit(model, tok, REQS, H.from_dict("memit", {**hp, **over}), Cache(tmp_path / "c"))
        [ld] = res.delta.layers.values()
        return ld.U.norm(dim=0), res

    once, r0 = edit(min_lead=0.0)
    assert r0.details["realize_rounds"] == 0 and r0.details["leads"] == [] and calls == []
    raised, r1 = edit(min_lead=1.0)
    assert r1.details["realize_rounds"] == 2 and calls == [3, 3, 3] and r1.details["leads"] == [0.5, 2.0, -1.0]
    assert torch.allclose(raised, torch.tensor([2.0, 1.0, 1.0]) * once, rtol=1e-4)
    calls.clear()
    _, r2 = edit(min_lead=0.4)  # every said target leads by more
    assert r2.details["realize_rounds"] == 0 and calls == [3]
    with pytest.raises(H.HparamsError, match="min_lead"):
        H.from_dict("memit", {**hp, "min_lead": -1.0})


def test_memit_splits_a_batch_it_cannot_realise_and_composes_the_halves(tok, tmp_path):
    from editing.delta import apply

    model = tiny_model("gpt2", vocab=VOCAB, d_model=48, d_mlp=96, init_range=0.2)
    hp = _small_hp("memit", layers=(1,))
    base = {**H.to_dict(hp), "mom2_update_weight": 2000.0, "min_realized": 0.95}  # a λ that realises little
    whole = compute_edit(model, tok, REQS, H.from_dict("memit", base), Cache(tmp_path / "c"))
    assert whole.details["sub_batches"] == 1 and min(whole.details["realized"]) < 0.95
    split = compute_edit(model, tok, REQS, H.from_dict("memit", {**base, "split_depth": 2}), Cache(tmp_path / "c"))
    d = split.details
    # 3 subjects: halves of 1 and 2, the 2 split again -> 3 sub-batches of one request, each realising more
    assert d["sub_batches"] == 3 and len(d["realized"]) == 3 and len(d["target_steps"]) == 3
    # realised is measured on the whole composed delta (a later sub-batch may undo part of an earlier one)
    assert all(0.0 < x < 1.5 for x in d["realized"]) and d["realized"] != whole.details["realized"]
    # one delta, rank 1 per sub-batch on the edited layer, that applies and reverts like any other
    [ld] = split.delta.layers.values()
    assert ld.rank == 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = apply(model, split.delta)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    a.revert()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(H.HparamsError, match="split_depth"):
        H.from_dict("memit", {**base, "split_depth": -1})


def test_target_norm_is_clamped(tok):
    model = tiny_model("gpt2", vocab=VOCAB)
    hp = H.TargetHparams(v_steps=15, v_lr=5.0, clamp_norm_factor=0.1, v_weight_decay=0.0, context_templates=())
    tg = optimize_targets(model, tok, "transformer.h.1", REQS, ["{}"], hp)
    ratio = tg.delta.norm(dim=-1) / tg.init.norm(dim=-1)
    assert bool((ratio <= 0.1 + 1e-4).all()) and bool((ratio > 0.09).all())


# ---------------------------------------------------------------------------------------------------
# statistics


def test_second_moments_match_a_direct_computation(tok):
    model = tiny_model("gpt2", vocab=VOCAB)
    seqs = [tok(t)["input_ids"] for t in ["The capital of France is Paris.", "Rome is the capital of Italy."]]
    corpus = Corpus("test", seqs, "x")
    got = compute_second_moments(model, [1], corpus)[1]
    from editing.hooks import Trace

    ks = []
    for s in seqs:  # one sequence at a time, no padding
        with Trace(model, ["transformer.h.1.mlp.c_proj"], retain_input=True) as tr:
            model(input_ids=torch.tensor([s]))
        ks.append(tr["transformer.h.1.mlp.c_proj"].input[0])
    K = torch.cat(ks).double()
    assert got[1] == sum(len(s) for s in seqs)
    assert torch.allclose(got[0], K.T @ K, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_statistics_pass_stops_at_the_highest_layer_it_needs(family, tok):
    """Nothing above the highest edited layer's MLP runs (no block above it, no logits), and every layer's sum
    is the one a full forward pass gives."""
    from editing.arch import spec_for
    from editing.hooks import Trace

    model = tiny_model(family, vocab=VOCAB)
    spec = spec_for(model)
    seqs = [tok(t)["input_ids"] for t in ["The capital of France is Paris.", "Rome is the capital of Italy."]]
    ran = []
    hooks = [model.get_submodule(spec.layer(2)).register_forward_hook(lambda *a: ran.append("layer 2")),
             model.get_output_embeddings().register_forward_hook(lambda *a: ran.append("logits"))]
    try:
        got = compute_second_moments(model, [0, 1], Corpus("test", seqs, "x"))
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
    names = [spec.mlp_out_at(0), spec.mlp_out_at(1)]
    for s in seqs:
        with Trace(model, names, retain_input=True) as tr:
            logits = model(input_ids=torch.tensor([s])).logits
        assert torch.isfinite(logits).all()  # hooks gone: the full pass runs again
        for i, n in enumerate(names):
            k = tr[n].input[0].double()
            got[i] = (got[i][0] - k.T @ k, got[i][1] - len(s))
    for i in (0, 1):
        assert got[i][1] == 0
        assert got[i][0].abs().max() < 1e-4


def test_statistics_cache_is_keyed_by_upstream_weights(tok, tmp_path):
    model = tiny_model("gpt2", vocab=VOCAB)
    corpus = Corpus("test", [tok("The capital of France is Paris.")["input_ids"]] * 3, "c1")
    store = Cache(tmp_path)
    c1 = second_moments(model, [1], corpus, store)[1]
    assert len(list((tmp_path / "stats").iterdir())) == 1
    h1 = upstream_hash(model, 1)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.add_(1.0)  # the edited matrix: keys unchanged
        model.transformer.h[2].mlp.c_fc.weight.add_(1.0)  # a later layer: keys unchanged
    assert upstream_hash(model, 1) == h1
    assert torch.equal(second_moments(model, [1], corpus, store)[1], c1)  # a cache hit
    assert len(list((tmp_path / "stats").iterdir())) == 1
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight.mul_(1.5)  # an earlier layer changes the keys
    assert upstream_hash(model, 1) != h1
    c2 = second_moments(model, [1], corpus, store)[1]
    assert not torch.equal(c1, c2) and len(list((tmp_path / "stats").iterdir())) == 2


# ---------------------------------------------------------------------------------------------------
# hparams


def test_every_shipped_preset_loads():
    from pathlib import Path

    import editing

    presets = sorted((Path(editing.__file__).parent / "presets").glob("*.yaml"))
    assert len(presets) >= 8
    for p in presets:
        hp = H.load(p)
        assert H.from_dict(hp.method, H.to_dict(hp)) == hp  # round trip
    assert H.default("rome", "gpt2").layer == 17 and H.default("memit", "gptj").layers == (3, 4, 5, 6, 7, 8)
    assert H.default("memit", "qwen2") == H.default("memit", "llama")


@pytest.mark.parametrize("text, match", [
    ("method: rome\nlayer: 1\nlayr: 2\n", r"unknown key.*'layr'"),
    ("method: rome\nlayer: one\n", r"'layer': expected int, found str"),
    ("method: rome\nlayer: true\n", r"'layer': expected int, found bool"),
    ("method: memit\nlayers: [1]\ntarget: {v_lr: fast}\n", r"'target.v_lr': expected float"),
    ("method: memit\nlayers: [1]\ntarget: {v_steeps: 3}\n", r"unknown key.*'target.v_steeps'"),
    ("method: memit\nlayers: [3, 1]\n", r"'layers': expected increasing"),
    ("method: memit\n", r"layers"),
    ("method: rome\nlayer: 1\ntarget: {essence_prompts: ['no placeholder']}\n", r"essence_prompts"),
])
def test_bad_hparams_name_the_key(tmp_path, text, match):
    p = tmp_path / "hp.yaml"
    p.write_text(text)
    with pytest.raises(H.HparamsError, match=match):
        H.load(p)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_target_leads_are_each_targets_smallest_teacher_forced_lead_over_the_runner_up(family):
    # batched with right padding (prompts and targets of different lengths) and equal to one unpadded forward
    # per request; above 0 exactly when greedy decoding says every target token
    from editing.tokens import encode_edit

    tok, model = tiny_tokenizer(320), tiny_model(family, vocab=320)
    reqs = [EditRequest("France", "The capital of {} is", "Warsaw"),
            EditRequest("Poland", "The head of state of {} is", "Andrzej Duda"),
            EditRequest("Japan", "{} speaks", "Japanese")]
    got = T.target_leads(model, tok, reqs, batch_size=2)
    for j, r in enumerate(reqs):
        ids, _, start = encode_edit(tok, r.prompt, r.subject, r.target_new)
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        leads = []
        for t in range(start, len(ids)):
            row = lp[t - 1].clone()
            mine = float(row[ids[t]])
            row[ids[t]] = float("-inf")
            leads.append(mine - float(row.max()))
        assert got[j] == pytest.approx(min(leads), abs=1e-4)
        greedy = all(int(lp[t - 1].argmax()) == ids[t] for t in range(start, len(ids)))
        assert greedy == (float(got[j]) > 0)
    # a model trained to say one target: its lead turns positive
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids, _, start = encode_edit(tok, reqs[0].prompt, reqs[0].subject, reqs[0].target_new)
    x = torch.tensor([ids])
    for _ in range(40):
        opt.zero_grad()
        out = model(x).logits[0, start - 1:len(ids) - 1]
        torch.nn.functional.cross_entropy(out, x[0, start:]).backward()
        opt.step()
    assert float(T.target_leads(model, tok, reqs[:1])[0]) > 0
