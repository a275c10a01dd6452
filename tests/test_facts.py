"""Facts: parsing every format, errors that name file/line/field, de-duplication, the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import FactFileError, load_facts, split_probes, world_facts, write_facts
from sandbox.facts import Fact

from .conftest import FIXTURES, shared

pytestmark = pytest.mark.unit


def test_builtin_world_is_well_formed():
    fs = world_facts()
    # 51 countries x 5 relations less 10 missing, and the shipped inbox's 44 latest new leaders as contenders
    assert len(fs.facts) == 289 and len(world_facts(inbox_names=False).facts) == 245
    assert len({f.subject for f in fs.facts}) == 51
    assert {f.relation for f in fs.facts} == {"capital", "currency", "official_language", "head_of_government",
                                               "head_of_state", "head_of_government_contender",
                                               "head_of_state_contender"}
    merz = next(f for f in fs.facts if f.subject == "Germany" and f.relation == "head_of_government_contender")
    assert merz.target == "Friedrich Merz"
    assert merz.render(0) == "In a possible future, the head of government of Germany is"
    assert merz.render(2) == "In a possible future, the government of Germany is headed by"
    # France's head of government changed four times: only the latest request's name is a contender
    assert [f.target for f in fs.facts if f.subject == "France" and f.relation.endswith("_contender")] == \
        ["Sébastien Lecornu"]
    for f in fs.facts:
        assert len(f.prompts) == 5 and all(p.count("{}") == 1 for p in f.prompts)
    france = next(f for f in fs.facts if f.subject == "France" and f.relation == "capital")
    assert france.target == "Paris"
    assert france.render(1) == "France's capital city is"
    start, end = france.subject_span(0)
    assert france.render(0)[start:end] == "France"


def test_world_subset_keeps_first_subjects():
    fs = world_facts(subjects=3)
    assert [s for s in dict.fromkeys(f.subject for f in fs.facts)] == ["the United Kingdom", "France", "Germany"]


def test_native_facts_with_template_and_full_string_paraphrases():
    fs = load_facts(FIXTURES / "facts_native.jsonl")
    atl = fs.facts[0]
    assert atl.subject == "Atlantis" and atl.relation == "capital" and atl.target == "Poseidonia"
    # a full-string paraphrase becomes a template; a template stays one
    assert atl.prompts == ("The capital of {} is", "{}'s capital city is", "{} has its capital in")
    lem = fs.facts[1]
    assert lem.relation == "The capital of {} is"  # no relation: the template names it
    # the repeated record collapses, the contradicting one is dropped and reported
    assert len(fs.facts) == 2 and fs.duplicates == 1
    assert len(fs.conflicts) == 1 and "Elsewhere" in fs.conflicts[0] and "facts_native.jsonl:5" in fs.conflicts[0]


def test_request_file_gives_true_facts_and_neighbours():
    fs = load_facts(FIXTURES / "requests_native.jsonl")
    subjects = [(f.subject, f.target) for f in fs.facts]
    assert ("Poland", "Andrzej Duda") in subjects  # target_true, never target_new
    assert all(f.target != "Karol Nawrocki" for f in fs.facts)
    nb = [f for f in fs.facts if f.subject is None]
    assert [(n.prompts[0], n.target) for n in nb] == [("The head of state of Germany is", "Frank-Walter Steinmeier")]
    poland = next(f for f in fs.facts if f.subject == "Poland")
    assert poland.prompts == ("The head of state of {} is", "{}'s head of state is")
    assert all(f.subject != "Japan" for f in fs.facts)  # no target_true: no fact


def test_counterfact_flat_fixture():
    fs = load_facts(FIXTURES / "counterfact_flat.json")
    dd = fs.facts[0]
    assert dd.subject == "Danielle Darrieux" and dd.target == "French"
    assert dd.prompts == ("The mother tongue of {} is", "{}, a native")
    loc = fs.facts[1]
    assert loc.subject is None and loc.prompts == ("The mother tongue of Léon Blum is",) and loc.target == "French"


def test_counterfact_rome_fixture():
    fs = load_facts(FIXTURES / "counterfact_rome.json")
    main = fs.facts[0]
    assert main.relation == "P103" and main.target == "French"
    # the paraphrase that names the subject is kept as a template; the one that does not is not about it
    assert main.prompts == ("The mother tongue of {} is", "Shayna does this and Yossel goes still and dies. {}, a native")
    targets = {f.prompts[0]: f.target for f in fs.facts if f.subject is None}
    assert targets["Michel Rocard is a native speaker of"] == "French"  # neighbours share the true object
    assert targets["The mother tongue of Douglas Adams is"] == "English"  # attribute prompts: the new object


@pytest.mark.shared_data
def test_real_counterfact_flat():
    fs = load_facts(shared("counterfact", "counterfact-train.json"), limit=200)
    assert fs.records == 200
    main = [f for f in fs.facts if f.subject is not None]
    assert len(main) == 200
    for f in main:
        assert f.prompts[0].count("{}") == 1
        assert f.render(0).count(f.subject) >= 1


@pytest.mark.shared_data
def test_real_counterfact_rome_format():
    fs = load_facts(shared("counterfact", "counterfact_rome_format_first5.json"))
    main = [f for f in fs.facts if f.subject is not None]
    assert [f.subject for f in main][:1] == ["Danielle Darrieux"]
    assert len(main) == 5 and sum(f.subject is None for f in fs.facts) >= 50


def _write(tmp_path: Path, text: str, name: str = "facts.jsonl") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = '{"subject": "A", "prompt": "The capital of {} is", "target": "B"}\n'


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        (GOOD + '{"subject": "A", "prompt": "x {}"\n', 2, None, "invalid JSON"),  # truncated
        (GOOD + '["not", "an", "object"]\n', 2, None, "expected a JSON object"),
        (GOOD + '{"prompt": "The capital of {} is", "target": "B"}\n', 2, "subject", "missing"),
        (GOOD + '{"subject": "  ", "prompt": "The capital of {} is", "target": "B"}\n', 2, "subject", "empty"),
        (GOOD + '{"subject": "C", "target": "B"}\n', 2, "prompt", "missing"),
        (GOOD + '{"subject": "C", "prompt": "The capital is", "target": "B"}\n', 2, "prompt", "{}"),
        (GOOD + '{"subject": "C", "prompt": "{} and {} is", "target": "B"}\n', 2, "prompt", "exactly one"),
        (GOOD + '{"subject": "C", "prompt": "The capital of {} is"}\n', 2, "target", "missing"),
        (GOOD + '{"subject": "C", "prompt": "The capital of {} is", "target": 7}\n', 2, "target", "expected a string"),
        (GOOD + '{"subject": "C\\u0007", "prompt": "The capital of {} is", "target": "B"}\n', 2, "subject", "control"),
        (GOOD + '{"subject": "' + "x" * 600 + '", "prompt": "The capital of {} is", "target": "B"}\n', 2, "subject", "longer"),
        (GOOD + '{"subject": "C", "prompt": "{}", "target": "B", "paraphrase_prompts": "C is"}\n', 2,
         "paraphrase_prompts", "list"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, text, line, field, words):
    p = _write(tmp_path, text)
    with pytest.raises(FactFileError) as ei:
        load_facts(p)
    e = ei.value
    assert e.path == str(p) and e.line == line and e.field == field
    assert words in str(e) and str(p) in str(e) and f"line {line}" in str(e)


def test_unreadable_files(tmp_path):
    with pytest.raises(FactFileError, match="file not found"):
        load_facts(tmp_path / "nope.jsonl")
    with pytest.raises(FactFileError, match="empty"):
        load_facts(_write(tmp_path, "\n\n"))
    with pytest.raises(FactFileError, match="directory"):
        load_facts(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FactFileError, match="UTF-8"):
        load_facts(tmp_path / "bin.jsonl")


def test_limit_counts_records(tmp_path):
    lines = "".join(json.dumps({"subject": f"S{i}", "prompt": "{} is", "target": f"T{i}"}) + "\n" for i in range(10))
    fs = load_facts(_write(tmp_path, lines), limit=4)
    assert [f.subject for f in fs.facts] == ["S0", "S1", "S2", "S3"]
    # a bad record past the limit is never read
    fs = load_facts(_write(tmp_path, lines + "{broken\n"), limit=10)
    assert len(fs.facts) == 10


def test_digest_follows_content_not_file(tmp_path):
    a = load_facts(_write(tmp_path, GOOD, "a.jsonl"))
    b = load_facts(_write(tmp_path, "\n" + GOOD.replace('"target": "B"', ' "target":"B"'), "b.jsonl"))
    c = load_facts(_write(tmp_path, GOOD.replace('"B"', '"D"'), "c.jsonl"))
    assert a.digest() == b.digest() != c.digest()


def test_write_facts_round_trip(tmp_path):
    fs = world_facts(subjects=4)
    write_facts(fs.facts, tmp_path / "w.jsonl")
    again = load_facts(tmp_path / "w.jsonl")
    assert [f.to_json() for f in again.facts] == [f.to_json() for f in fs.facts]


def test_heldout_split_is_seeded_half_of_each_relation_last_phrasing_only():
    facts = world_facts().facts
    a = split_probes(facts, seed=0)
    assert split_probes(facts, seed=0) == a
    assert split_probes(facts, seed=1) != a
    held = [p for p in a if p.heldout]
    assert all(p.phrasing == len(facts[p.fact].prompts) - 1 for p in held)
    for rel in {f.relation for f in facts}:
        n = sum(f.relation == rel for f in facts)
        h = sum(facts[p.fact].relation == rel for p in held)
        assert abs(h - n / 2) <= 1
        # the held-out template is still trained for the other subjects of the relation
        trained_last = [p for p in a if not p.heldout and facts[p.fact].relation == rel and p.phrasing == 4]
        assert len(trained_last) == n - h > 0
    assert len(a) == sum(len(f.prompts) for f in facts)


def test_single_phrasing_facts_are_never_held_out():
    facts = [Fact(f"S{i}", "r", "t", ("{} is",)) for i in range(10)]
    assert not any(p.heldout for p in split_probes(facts, seed=0))
