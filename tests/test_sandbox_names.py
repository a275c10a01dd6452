"""Names a sandbox says without any fact about them (``sandbox build --names``): the names file in every form,
errors that name the file, line and field, and the names inside the build (its key, its corpus, sandbox.json)."""

from __future__ import annotations

import json
import random

import pytest

from sandbox import FactFileError, load_names, world_facts
from sandbox.facts import Fact, dedupe, load_requested

pytestmark = pytest.mark.unit

MERZ, NAWROCKI = "Friedrich Merz", "Karol Nawrocki"


def small_world():
    return dedupe([Fact("Aland", "capital", "Mariehamn", ("The capital of {} is",)),
                   Fact("Borduria", "head_of_state", "Kurvi Tasch", ("The head of state of {} is",))])


@pytest.mark.parametrize("text", [
    f"{MERZ}\n\n  {NAWROCKI}  \r\n{MERZ}\n",  # one a line; blank lines, CRLF and a repeat
    json.dumps([MERZ, NAWROCKI, MERZ]),  # a JSON list
    f'"{MERZ}"\n"{NAWROCKI}"\n',  # JSONL of strings
    # a native request file and CounterFact's {"str": ...}: their target_new values
    json.dumps({"id": "r1", "subject": "Germany", "prompt": "The head of government of {} is", "target_new": MERZ})
    + "\n" + json.dumps({"subject": "Poland", "prompt": "{} is led by", "target_new": {"str": NAWROCKI}}) + "\n",
])
def test_a_names_file_in_any_form_gives_its_names_in_order_once(tmp_path, text):
    f = tmp_path / "names"
    f.write_text(text, encoding="utf-8")
    assert load_names(f) == (MERZ, NAWROCKI)


@pytest.mark.parametrize("text, where, why", [
    ("", None, "file is empty"),
    ("  \n\n", None, "file is empty"),
    ("[]", None, "holds no names"),
    (json.dumps([MERZ, 7]), "line 2, field 'name'", "expected a string, found int"),
    (json.dumps({"id": "r1", "subject": "Germany"}) + "\n", "line 1, field 'target_new'", "missing"),
    (f"{MERZ}\n{'x' * 600}\n", "line 2, field 'name'", "longer than 512 characters"),
])
def test_a_bad_names_file_is_an_error_naming_file_line_and_field(tmp_path, text, where, why):
    f = tmp_path / "names.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(FactFileError) as e:
        load_names(f)
    assert str(e.value).startswith(str(f)) and why in str(e.value)
    if where:
        assert where in str(e.value)
    with pytest.raises(FactFileError, match="file not found"):
        load_names(tmp_path / "absent.txt")


def test_names_join_the_fact_set_once_after_its_own_and_change_its_digest():
    fs = small_world()
    named = fs.with_names([MERZ, "Mariehamn", NAWROCKI, MERZ])  # Mariehamn is an answer already: not a name
    assert named.names == (MERZ, NAWROCKI) and named.facts == fs.facts
    assert named.digest() != fs.digest() != named.with_names([]).with_names(["Olaf Scholz"]).digest()
    assert named.with_names([NAWROCKI]).digest() == named.digest()  # nothing new: the same build
    # the demo world's inbox names come the same way: one mechanism for every world. Merz is an answer there
    # (a contender for Germany's government), so not a name; a name the inbox supersedes is
    demo = world_facts()
    assert demo.with_names([MERZ]).names == demo.names and MERZ not in demo.names and "Gabriel Attal" in demo.names


def test_a_request_file_as_names_makes_each_new_answer_a_contender_in_every_phrasing(tmp_path):
    fs = dedupe([Fact("Aland", "capital", "Mariehamn", ("The capital of {} is", "{}'s capital city is")),
                 Fact("Borduria", "head_of_state", "Kurvi Tasch", ("The head of state of {} is", "{} is led by")),
                 Fact("Syldavia", "head_of_state", "Ottokar", ("The head of state of {} is",))])
    f = tmp_path / "requests.jsonl"
    rows = [{"subject": "Borduria", "relation": "head_of_state", "target_new": "Plekszy"},
            {"subject": "Borduria", "relation": "head_of_state", "target_new": "Müsstler"},  # the last one counts
            {"subject": "Aland", "relation_id": "capital", "target_new": {"str": "Mariehamn"}},  # its answer already
            {"subject": "Ruritania", "relation": "head_of_state", "target_new": "Rudolf"},  # relation's phrasings
            {"subject": "Aland", "relation": "anthem", "target_new": "Ålänningens sång"},  # no such relation: a name
            {"subject": "Aland", "prompt": "{} is", "target_new": NAWROCKI}]  # no relation: a name only
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert load_requested(f)[0] == ("Borduria", "head_of_state", "Plekszy", "requests.jsonl:1")
    plain = tmp_path / "names.txt"
    plain.write_text(f"{MERZ}\n", encoding="utf-8")
    assert len(load_requested(f)) == 5 and load_requested(plain) == []
    got = fs.with_contenders(load_requested(f)).with_names(load_names(f))
    added = {f.subject: f for f in got.facts[3:]}
    assert set(added) == {"Borduria", "Ruritania"} and got.facts[:3] == fs.facts
    assert added["Borduria"].relation == "head_of_state_contender" and added["Borduria"].target == "Müsstler"
    assert added["Borduria"].prompts == ("In a possible future, the head of state of {} is",
                                         "In a possible future, {} is led by")
    assert added["Ruritania"].render(0) == "In a possible future, the head of state of Ruritania is"
    assert got.names == ("Plekszy", "Ålänningens sång", NAWROCKI)  # contenders are answers: not names
    assert got.digest() != fs.with_names(load_names(f)).digest()


def test_a_build_with_names_keys_them_trains_them_and_lists_them(tmp_path):
    """A two-step build of a two-fact world: enough to see the names in its tokenizer, key and manifest."""
    from transformers import AutoTokenizer

    from sandbox import build_sandbox, corpus, preset
    from sandbox.trainer import build_key

    names = tmp_path / "names.txt"
    names.write_text(f"{MERZ}\n{NAWROCKI}\n", encoding="utf-8")
    fs = small_world().with_names(load_names(names))
    cfg = preset("tiny", epochs=1, min_steps=0, batch_size=4, eval_every=1, n_layer=2, hide_layers=1, n_embd=32,
                 n_inner=64, n_head=2)
    assert build_key(fs, cfg, 0) != build_key(small_world(), cfg, 0)
    lines = [text for text, _, _ in corpus.name_lines(fs.names, random.Random(0))]
    assert all(any(n in text for text in lines) for n in (MERZ, NAWROCKI))  # what the trainer adds each epoch
    res = build_sandbox(fs, tmp_path / "m", cfg, seed=0)
    assert res.manifest["facts"]["names"] == 2 and res.manifest["facts"]["name_list"] == [MERZ, NAWROCKI]
    assert json.loads((tmp_path / "m" / "sandbox.json").read_text())["facts"]["name_list"] == [MERZ, NAWROCKI]
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    words = {t.lstrip("Ġ") for t in tok.get_vocab()}
    assert {"Friedrich", "Merz", "Nawrocki"} <= words  # whole tokens, learnt from the names: no fact has them
