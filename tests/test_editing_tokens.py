"""Subject and target positions on tokenizers with and without a BOS."""

from __future__ import annotations

import pytest

from editing.tokens import TokenizationError, joined, prompt_target_ids, subject_last_token

from .conftest import shared

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def sandbox_tok():
    from sandbox.tokenizer import as_transformers, train_tokenizer

    texts = ["The capital of the United Kingdom is London.", "The head of state of Poland is Andrzej Duda."] * 3
    return as_transformers(train_tokenizer(texts, 300))


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared(path), local_files_only=True)


def _check(tok, template, subject):
    ids, last = subject_last_token(tok, template, subject)
    text = template.replace("{}", subject)
    # decoding everything up to and including the subject's last token ends exactly with the subject
    upto = tok.decode(ids[: last + 1], skip_special_tokens=True)
    assert upto.strip().endswith(subject), (upto, subject)
    assert not tok.decode(ids[: last], skip_special_tokens=True).strip().endswith(subject)
    assert tok.decode(ids, skip_special_tokens=True).strip() == text.strip()
    return ids, last


def test_subject_position_on_the_sandbox_tokenizer(sandbox_tok):
    _check(sandbox_tok, "The capital of {} is", "the United Kingdom")
    _check(sandbox_tok, "{}'s head of state is", "Poland")


@pytest.mark.shared_data
def test_subject_position_on_gpt2_tokenizer():
    tok = _tok("gpt2-tokenizer")
    ids, last = _check(tok, "The mother tongue of {} is", "Danielle Darrieux")
    assert "Danielle Darrieux".endswith(tok.decode([ids[last]]).strip())
    assert tok.decode([ids[last + 1]]) == " is"


@pytest.mark.shared_data
def test_subject_position_on_a_bos_adding_tokenizer():
    tok = _tok("stories260K")
    ids, last = _check(tok, "{} went to the park", "Lily")
    assert ids[0] == tok.bos_token_id and last == 1  # a piece-counting lookup would say 0
    ids, last = _check(tok, "One day, {} found a ball", "Tom")
    assert "Tom".endswith(tok.decode([ids[last]]).strip()) and last >= 4


@pytest.mark.shared_data
def test_prompt_target_split_with_bos():
    tok = _tok("stories260K")
    ids, n = prompt_target_ids(tok, "Lily went to the", "park")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[n:], skip_special_tokens=True).strip() == "park"
    assert tok.decode(ids[:n], skip_special_tokens=True).strip() == "Lily went to the"


def test_prompt_target_split_and_the_joining_space(sandbox_tok):
    ids, n = prompt_target_ids(sandbox_tok, "The capital of Poland is", "Warsaw")
    assert sandbox_tok.decode(ids[n:]) == " Warsaw"
    assert joined("The capital is", " Warsaw") == ("The capital is Warsaw", 14)  # no double space
    assert joined("The capital is", "Warsaw") == ("The capital is Warsaw", 15)


def test_errors():
    from sandbox.tokenizer import as_transformers, train_tokenizer

    tok = as_transformers(train_tokenizer(["a b c"] * 3, 300))
    with pytest.raises(TokenizationError, match="exactly one"):
        subject_last_token(tok, "no placeholder", "x")
