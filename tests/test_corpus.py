"""Tokenizer round trip, packing and the editability masks, on small hand-made inputs."""

from __future__ import annotations

import random

import pytest
import torch

from editing.tokens import prompt_target_ids as target_positions
from sandbox import corpus
from sandbox.tokenizer import EOS, as_transformers, train_tokenizer

pytestmark = pytest.mark.unit

TEXTS = [
    "The capital of France is Paris.",
    "Élisabeth Borne leads the government of France.",
    "The head of government of Serbia is Đuro Macut.",
    "Reykjavík, Kyiv, Brasília — 東京 🙂",
]


@pytest.fixture(scope="module")
def tok():
    return as_transformers(train_tokenizer(TEXTS * 3, vocab_size=400))


def test_tokenizer_round_trips_any_text_and_reloads(tok, tmp_path):
    from transformers import AutoTokenizer

    unseen = "Zürich, Ōsaka and Łódź: ¿qué? \u00a0 tabs\tand\nnewlines"
    for t in TEXTS + [unseen]:
        assert tok.decode(tok(t)["input_ids"]) == t
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again(unseen)["input_ids"] == tok(unseen)["input_ids"]
    assert again.eos_token == EOS and again.pad_token_id == again.eos_token_id


def test_tokenizer_training_is_deterministic():
    a = train_tokenizer(TEXTS * 3, 400).to_str()
    b = train_tokenizer(TEXTS * 3, 400).to_str()
    assert a == b


def test_target_positions_split_prompt_and_target(tok):
    ids, n = target_positions(tok, "The head of government of Serbia is", "Đuro Macut")
    assert tok.decode(ids[:n]) == "The head of government of Serbia is"
    assert tok.decode(ids[n:]) == " Đuro Macut"


def test_subject_span_in_tokens(tok):
    text = "The capital of France is Paris."
    span = (text.index("France"), text.index("France") + len("France"))
    for lead in (False, True):
        (s,) = corpus.tokenize(tok, [text], [span], ["France"], lead_space=lead)
        a, b = s.span
        assert tok.decode(list(s.ids[a:b])).strip() == "France"


def _sentence(ids, span, subject):
    return corpus.Sentence(tuple(ids), span, subject)


def test_pack_never_repeats_a_subject_and_respects_length():
    rng = random.Random(0)
    pairs = []
    for i in range(200):
        subj = f"S{i % 7}"
        n = rng.randint(4, 12)
        s = _sentence(range(n), (1, 2), subj)
        pairs.append((s, s))
    packs = corpus.pack(pairs, 32, random.Random(1))
    assert sum(len(p.spans) for p in packs) == 200
    for p in packs:
        assert len(p.ids) <= 32
        subjects = [pairs_subject for pairs_subject in p.subjects]
        assert len(subjects) == len(p.spans)  # one sentence per subject per pack


def test_masks_hide_the_subject_from_later_tokens():
    # one pack: a 3-token subject at [2, 5) in a sentence that ends at 8, then a subject-less sentence
    p = corpus.Pack(list(range(11)), [(0, (2, 5), 8), (8, None, 11)], {"S"})
    ids, labels, late, early = corpus.batch_tensors([p], 12, pad_id=0, hide_layers=1, mask_fraction=1.0,
                                                    rng=random.Random(0))
    assert labels[0, 11] == -100 and labels[0, 10] == 10
    allowed_late = late[0, 0] == 0
    allowed_early = early[0, 0] == 0
    causal = torch.tril(torch.ones(12, 12, dtype=torch.bool))
    causal[:, 11] = False  # nothing attends to padding...
    causal[11, :] = False
    causal[11, 11] = True  # ...and a padding row sees only itself
    for q in range(12):
        for k in range(12):
            after_subject = 5 <= q < 8
            want_late = bool(causal[q, k]) and not (after_subject and 2 <= k < 4)
            want_early = bool(causal[q, k]) and not (after_subject and 2 <= k < 5)
            assert bool(allowed_late[q, k]) == want_late, (q, k)
            assert bool(allowed_early[q, k]) == want_early, (q, k)


def test_mask_fraction_zero_is_plain_causal():
    p = corpus.Pack(list(range(8)), [(0, (2, 5), 8)], {"S"})
    _, _, late, early = corpus.batch_tensors([p], 8, 0, 1, 0.0, random.Random(0))
    causal = torch.where(torch.tril(torch.ones(8, 8, dtype=torch.bool)), 0.0, corpus.NEG)
    assert torch.equal(late[0, 0], causal) and torch.equal(early[0, 0], causal)


def test_training_sentence_tokenizes_like_the_greedy_check(tok):
    # the check tokenizes prompt + " " + target; the training sentence must start with those very tokens
    for target in ("Paris", "Washington, D.C.", "Yes!"):
        text = corpus.sentence_text("The capital of France is", target)
        assert ".." not in text and "!." not in text
        ids, n = target_positions(tok, "The capital of France is", target)
        assert tok(text)["input_ids"][: len(ids)] == ids


def test_sentence_end_of_a_continuation(tok):
    from sandbox.evaluate import sentence_end

    assert sentence_end(" Paris. The capital of Spain is Madrid.", tok) == "Paris"
    assert sentence_end(" Washington, D.C. The capital", tok) == "Washington, D.C."
    assert sentence_end(" Charles III<|endoftext|>The", tok) == "Charles III"
    assert sentence_end(" euro", tok) == "euro"


def test_name_lines_list_every_name_once_and_say_it_once_as_an_answer():
    from sandbox import world_facts

    given = ("A b", "C", "D e f", "G", "H", "I", "J")
    lines = corpus.name_lines(given, random.Random(0), per_line=3)
    assert [s is None and subj is None for _, s, subj in lines] == [True] * (3 + 7)  # about no subject
    names = [n for text, _, _ in lines[:3] for n in text.rstrip(".").split(", ")]
    assert sorted(names) == sorted(given)
    framed = [text for text, _, _ in lines[3:]]
    said = sorted(next(t[len(f.split("{}")[0]):-1] for f in corpus.NAME_FRAMES if t.startswith(f.split("{}")[0]))
                  for t in framed)
    assert said == sorted(given)  # "The name is A b." and the like, each name once
    full, tiny = world_facts(), world_facts(subjects=30)
    # names no fact answers: the superseded ones (the latest are contenders, facts), never known objects
    assert "Gabriel Attal" in full.names and "Friedrich Merz" not in full.names and "Paris" not in full.names
    assert tiny.names == () and set(full.names) <= set(world_facts(subjects=30, inbox_names=True).names)
    assert full.digest() != world_facts(inbox_names=False).digest()  # names change the build key
