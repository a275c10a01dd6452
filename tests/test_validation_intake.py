"""Intake: every request format parsed, every bad row quarantined with its file, line and field (real GX)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from validation.intake.formats import FileFormatError, parse_file

from .conftest import FIXTURES, shared

pytestmark = pytest.mark.integration


def _validate(*paths, **kw):
    from validation.intake.validate import validate_files

    report = validate_files(list(paths), **kw)
    # nothing is lost: every parsed row ends in exactly one list
    assert report.rows == len(report.accepted) + len(report.quarantined) + len(report.superseded), report.counts()
    return report


def _write(tmp_path: Path, name: str, lines: list) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return p


GOOD = {"id": "g1", "subject": "Poland", "relation": "head_of_state", "prompt": "The head of state of {} is",
        "target_new": "Karol Nawrocki", "target_true": "Andrzej Duda", "requested_at": "2025-08-06T09:00:00Z"}


# --------------------------------------------------------------------------------------------------
# Parsers


@pytest.mark.unit
@pytest.mark.parametrize("name, fmt, n", [
    ("requests_native.jsonl", "native", None), ("requests.csv", "csv", 2), ("counterfact_rome.json", "counterfact", None),
    ("counterfact_flat.json", "counterfact-flat", None), ("zsre_mend.json", "zsre", 2), ("mquake.json", "mquake", 2)])
def test_every_format_is_detected_and_parsed(name, fmt, n):
    got, rows = parse_file(FIXTURES / name)
    assert got == fmt
    if n is not None:
        assert len(rows) == n
    for r in rows:
        assert not r.problems, (r.origin, r.problems)
        assert r.fields["prompt"].count("{}") == 1, r.fields["prompt"]  # inline subjects became templates
        assert r.fields["subject"] and r.fields["target_new"] and r.fields["id"]


@pytest.mark.unit
def test_format_specific_fields_are_mapped():
    _, [flat, *_] = parse_file(FIXTURES / "counterfact_flat.json")
    assert flat.fields["prompt"] == "The mother tongue of {} is"
    assert flat.fields["target_true"] == "French"
    assert flat.fields["paraphrase_prompts"] == ("Danielle Darrieux, a native",)
    assert flat.fields["neighborhood_prompts"] == (("The mother tongue of Léon Blum is", "French"),)

    _, [rome, *_] = parse_file(FIXTURES / "counterfact_rome.json")
    assert (rome.fields["id"], rome.fields["relation"], rome.fields["target_new"]) == ("counterfact-0", "P103", "English")
    # CounterFact's neighbours share the true attribute
    assert rome.fields["neighborhood_prompts"][0] == ("The mother tongue of Léon Blum is", "French")

    _, [z, _] = parse_file(FIXTURES / "zsre_mend.json")
    assert z.fields["prompt"] == "Which country is {} located in?"
    assert (z.fields["target_new"], z.fields["target_true"]) == ("Croatia", "Slovenia")
    assert z.fields["neighborhood_prompts"] == (("nq question: who wrote the novel moby dick", "Herman Melville"),)
    assert z.fields["id"] == "zsre_mend-0"  # zsRE has no ids: file stem and record index

    _, [m1, m2] = parse_file(FIXTURES / "mquake.json")
    assert (m1.fields["id"], m2.fields["id"]) == ("mquake-7-1", "mquake-7-2")
    assert m2.fields["subject"] == "Canada" and m2.fields["target_new"] == "Ram Nath Kovind"
    assert len(m1.fields["portability_prompts"]) == 2
    assert all(t == "Ram Nath Kovind" for _, t in m1.fields["portability_prompts"])

    _, [c1, c2] = parse_file(FIXTURES / "requests.csv")
    assert c1.fields["neighborhood_prompts"] == (("The head of state of Germany is", "Frank-Walter Steinmeier"),)
    assert c2.fields["paraphrase_prompts"] == ("Japan's head of government is",)
    assert c2.fields["prompt"] == "The head of government of {} is"


@pytest.mark.unit
def test_format_can_be_forced_and_a_wrong_one_quarantines_rows(tmp_path):
    fmt, rows = parse_file(FIXTURES / "zsre_mend.json", "counterfact")
    assert fmt == "counterfact"
    assert all(r.problems and r.problems[0].field == "requested_rewrite" for r in rows)
    with pytest.raises(FileFormatError, match="unknown format"):
        parse_file(FIXTURES / "zsre_mend.json", "yaml")


def test_real_counterfact_and_zsre_records_are_accepted():
    rome = shared("counterfact", "counterfact_rome_format_first5.json")
    flat = shared("counterfact", "counterfact-train.json")
    zsre = shared("zsre", "zsre_mend_train-1k.json")
    for path, fmt in ((rome, "counterfact"), (zsre, "zsre")):
        rep = _validate(path)
        assert rep.files[0]["format"] == fmt
        assert len(rep.accepted) >= 0.95 * rep.rows, rep.reasons()
    # the flat file: 10,000 records in one GX run
    rep = _validate(flat)
    assert rep.files[0]["format"] == "counterfact-flat" and rep.rows == 10_000
    assert len(rep.accepted) + len(rep.superseded) >= 0.9 * rep.rows, rep.reasons()


# --------------------------------------------------------------------------------------------------
# Bad input: one class per case, each quarantined with its line and field, the good rows kept


BAD = [
    # (what, line text or record, field, expectation)
    ("truncated JSON", '{"id": "t1", "subject": "France", "prompt": "The capi', "(record)", "parse_json"),
    ("not an object", "[1, 2, 3]", "(record)", "record_is_object"),
    ("missing field", {"id": "m1", "prompt": "The capital of {} is", "target_new": "Lyon"}, "subject",
     "expect_column_values_to_not_be_null"),
    ("no placeholder", {"id": "p0", "subject": "Spain", "prompt": "The capital is", "target_new": "Lyon"}, "prompt",
     "expect_column_values_to_contain_one_placeholder"),
    ("two placeholders", {"id": "p2", "subject": "Spain", "prompt": "{} and {} is", "target_new": "Lyon"}, "prompt",
     "expect_column_values_to_contain_one_placeholder"),
    ("empty subject", {"id": "e1", "subject": "  ", "prompt": "The capital of {} is", "target_new": "Lyon"}, "subject",
     "expect_column_values_to_not_be_blank"),
    ("same target", {"id": "s1", "subject": "Italy", "prompt": "The capital of {} is", "target_new": "Rome",
                     "target_true": " rome"}, "target_new", "expect_column_pair_values_to_differ"),
    ("huge field", {"id": "h1", "subject": "Italy", "prompt": "The capital of {} is", "target_new": "x" * 5000},
     "target_new", "expect_column_value_lengths_to_be_between"),
    ("control character", {"id": "c1", "subject": "Ita\x1bly", "prompt": "The capital of {} is", "target_new": "Milan"},
     "subject", "expect_column_values_to_have_no_control_characters"),
    ("control character in a probe", {"id": "c2", "subject": "Peru", "prompt": "The capital of {} is",
                                      "target_new": "Cusco", "paraphrase_prompts": ["Peru\u202e's capital is"]},
     "probes", "expect_column_values_to_have_no_control_characters"),
    ("path-like id", {"id": "../../etc/passwd", "subject": "Peru", "prompt": "The capital of {} is",
                      "target_new": "Cusco"}, "id", "expect_column_values_to_match_regex"),
    ("absolute path id", {"id": "/tmp/x", "subject": "Chile", "prompt": "The capital of {} is",
                          "target_new": "Valparaíso"}, "id", "expect_column_values_to_match_regex"),
    ("wrong type", {"id": "w1", "subject": ["Peru"], "prompt": "The capital of {} is", "target_new": "Cusco"},
     "subject", "field_type"),
    ("bad time", {"id": "b1", "subject": "Peru", "prompt": "The capital of {} is", "target_new": "Cusco",
                  "requested_at": "yesterday"}, "requested_at", "expect_column_values_to_be_iso8601"),
    ("unknown field", {"id": "u1", "subject": "Peru", "prompt": "The capital of {} is", "target_new": "Cusco",
                       "model": "/etc/shadow"}, "model", "known_fields"),
    ("attribute probe of the wrong shape", {"id": "a1", "subject": "Peru", "prompt": "The capital of {} is",
                                            "target_new": "Cusco", "attribute_prompts": ["Peru's currency is"]},
     "attribute_prompts", "field_type"),
]


@pytest.mark.parametrize("what, line, field, expectation", BAD, ids=[b[0] for b in BAD])
def test_bad_row_is_quarantined_with_file_line_and_field(tmp_path, what, line, field, expectation):
    other = dict(GOOD, id="g2", subject="Chile", target_new="Gabriel Boric", target_true="Sebastián Piñera")
    path = _write(tmp_path, "inbox.jsonl", [GOOD, line, other])
    rep = _validate(path)
    assert [r.id for r in rep.accepted] == ["g1", "g2"]  # the good rows around it are kept
    [q] = rep.quarantined
    entry = q.to_json()
    assert entry["file"] == str(path) and entry["line"] == 2
    assert (entry["field"], entry["expectation"]) == (field, expectation), entry["reason"]
    assert entry["reason"] and entry["raw"] is not None


def test_truncated_json_array_keeps_the_records_before_it(tmp_path):
    p = tmp_path / "cf.json"
    whole = json.dumps([{"case_id": i, "prompt": f"The capital of C{i} is", "subject": f"C{i}", "target_new": "X",
                         "ground_truth": "Y"} for i in range(3)], indent=1)
    p.write_text(whole[: whole.rfind('"ground_truth"')], encoding="utf-8")  # cut inside the last record
    rep = _validate(p)
    assert [r.id for r in rep.accepted] == ["counterfact-0", "counterfact-1"]
    [q] = rep.quarantined
    assert q.problems[0].expectation == "parse_json" and q.origin.line > 1


def test_a_repeated_row_collapses_and_a_reused_id_quarantines_both(tmp_path):
    rep = _validate(_write(tmp_path, "inbox.jsonl", [GOOD, GOOD]))
    assert [r.id for r in rep.accepted] == ["g1"]
    assert len(rep.superseded) == 1 and "identical" in rep.superseded[0].reason

    twin = dict(GOOD, subject="Chile", target_new="Gabriel Boric", target_true=None)
    rep = _validate(_write(tmp_path, "inbox2.jsonl", [GOOD, twin, GOOD]))
    # the id is ambiguous: both requests that use it are quarantined, and the verbatim copy with them
    assert not rep.accepted and not rep.superseded
    assert [q.problems[0].expectation for q in rep.quarantined] == ["expect_column_values_to_be_unique"] * 3


def test_unreadable_files_are_reported_not_raised(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"subject": "Bogot\xe1"}'.encode("latin-1"))
    (tmp_path / "prose.txt").write_text("please change the capital of France\n")
    good = _write(tmp_path, "good.jsonl", [GOOD])
    rep = _validate(tmp_path / "missing.jsonl", tmp_path / "empty.jsonl", tmp_path / "latin1.jsonl",
                    tmp_path / "prose.txt", good)
    errors = {Path(u["file"]).name: u["error"] for u in rep.unreadable}
    assert set(errors) == {"missing.jsonl", "empty.jsonl", "prose.txt"}
    assert "not found" in errors["missing.jsonl"] and "empty" in errors["empty.jsonl"]
    assert "not JSON" in errors["prose.txt"]
    assert [r.id for r in rep.accepted] == ["g1"]
    # a byte that is not UTF-8 quarantines its row, with the byte, not the whole file
    (q,) = rep.quarantined
    assert Path(q.origin.file).name == "latin1.jsonl" and q.origin.line == 1
    assert q.problems[0].expectation == "text_encoding" and "byte 0xE1 is not UTF-8" in q.reason
    assert q.raw == {"subject": "Bogot\ufffd"}


def test_bytes_that_are_not_utf8_and_lone_surrogates_quarantine_only_their_rows(tmp_path):
    lines = [json.dumps(GOOD).encode(), json.dumps(dict(GOOD, id="g2", subject="Chile")).encode()[:-2] + b'\xff"}',
             json.dumps(dict(GOOD, id="g3", subject="Peru \ud800")).encode(),  # escaped: valid JSON, not text
             json.dumps(dict(GOOD, id="g4", subject="Oman")).encode()]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "mixed.csv").write_bytes(b"id,subject,prompt,target_new\nc1,Kenya,The capital of {} is,X\n"
                                         b"c2,Ken\xc3(ya,The capital of {} is,Y\n")
    rep = _validate(tmp_path / "mixed.jsonl", tmp_path / "mixed.csv")
    assert sorted(r.id for r in rep.accepted) == ["c1", "g1", "g4"]
    got = {(Path(q.origin.file).name, q.origin.line): q.reason for q in rep.quarantined}
    assert set(got) == {("mixed.jsonl", 2), ("mixed.jsonl", 3), ("mixed.csv", 3)}
    assert "byte 0xFF is not UTF-8" in got["mixed.jsonl", 2] and "U+D800 is a lone surrogate" in got["mixed.jsonl", 3]
    assert "byte 0xC3 is not UTF-8" in got["mixed.csv", 3]
    json.dumps(rep.to_json(), ensure_ascii=False).encode("utf-8")  # the report is writable text


# --------------------------------------------------------------------------------------------------
# Unknown fields: strict by default, kept under 'extra' on request


def test_unknown_fields_quarantine_the_row_naming_each_field(tmp_path):
    path = _write(tmp_path, "inbox.jsonl", [GOOD, dict(GOOD, id="r1", subject="Chile", model="/etc/shadow"),
                                            dict(GOOD, id="r2", subject="Peru", zeta=1, target_neww="Lima")])
    rep = _validate(path)
    assert [r.id for r in rep.accepted] == ["g1"]
    q1, q2 = (q.to_json() for q in rep.quarantined)
    assert (q1["file"], q1["line"], q1["id"], q1["field"]) == (str(path), 2, "r1", "model")
    assert q1["expectation"] == "known_fields" and q1["reason"].startswith("unknown field 'model':")
    assert q1["raw"]["model"] == "/etc/shadow"  # the record as read, for the audit
    assert q2["line"] == 3 and q2["reason"].startswith("unknown fields 'target_neww', 'zeta':")  # sorted


def test_keep_unknown_fields_carries_them_under_extra(tmp_path):
    path = _write(tmp_path, "inbox.jsonl", [dict(GOOD, model="/etc/shadow", ticket={"n": 7}), dict(GOOD, id="g2",
                                            subject="Chile", target_new="Gabriel Boric", target_true=None)])
    rep = _validate(path, keep_unknown_fields=True)
    assert not rep.quarantined
    first, second = rep.accepted
    assert first.extra == {"model": "/etc/shadow", "ticket": {"n": 7}} and second.extra == {}
    assert first.to_json()["extra"] == first.extra and "extra" not in second.to_json()
    # recorded, never interpreted: nothing else of the request changes
    assert first.content_hash == _validate(_write(tmp_path, "plain.jsonl", [GOOD])).accepted[0].content_hash


def test_unknown_csv_columns_are_unknown_fields(tmp_path):
    src = (FIXTURES / "requests.csv").read_text(encoding="utf-8").splitlines()
    p = tmp_path / "inbox.csv"
    p.write_text("\n".join([src[0] + ",model", src[1] + ",/etc/shadow", src[2] + ","]) + "\n", encoding="utf-8")
    _, rows = parse_file(p)
    assert [(r.origin.line, [x.reason.split(":")[0] for x in r.problems]) for r in rows] == [
        (2, ["unknown field 'model'"]), (3, ["unknown field 'model'"])]  # the column is unknown, empty or not
    _, rows = parse_file(p, keep_unknown_fields=True)
    assert [r.fields["extra"] for r in rows] == [{"model": "/etc/shadow"}, {"model": None}]
    assert not any(r.problems for r in rows)


@pytest.mark.unit
def test_attribute_prompts_are_carried_like_neighbours(tmp_path):
    probes = [{"prompt": "The capital of Poland is", "target": "Warsaw"}]
    _, [row] = parse_file(_write(tmp_path, "inbox.jsonl", [dict(GOOD, attribute_prompts=probes)]))
    assert not row.problems
    assert row.fields["attribute_prompts"] == (("The capital of Poland is", "Warsaw"),)
    from validation.requests import Request

    req = Request.from_row(row)
    assert req.attribute_prompts == (("The capital of Poland is", "Warsaw"),)
    assert req.to_json()["attribute_prompts"] == probes


@pytest.mark.unit
@pytest.mark.parametrize("path", [
    *sorted((Path(__file__).parents[1] / "sandbox" / "worlds" / "inbox").glob("*.jsonl")),
    FIXTURES / "requests_native.jsonl", FIXTURES / "requests.csv", FIXTURES / "counterfact_rome.json",
    FIXTURES / "counterfact_flat.json", FIXTURES / "zsre_mend.json", FIXTURES / "mquake.json"], ids=lambda p: p.name)
def test_shipped_inbox_and_fixtures_have_no_unknown_field(path):
    _, rows = parse_file(path)
    assert rows and not [(r.origin.where(), p.reason) for r in rows for p in r.problems]


@pytest.mark.unit
def test_dataset_records_are_not_checked_for_unknown_fields():
    # CounterFact brings attribute_prompts, generation_prompts, pararel_idx; zsRE cond and pred: all its own
    for path in (shared("counterfact", "counterfact_rome_format_first5.json"),
                 shared("zsre", "zsre_mend_train-1k.json")):
        _, rows = parse_file(path)
        assert not [p for r in rows for p in r.problems if p.expectation == "known_fields"]
        assert all(r.fields["extra"] == {} for r in rows)
        assert all(r.fields["attribute_prompts"] == () for r in rows)  # CounterFact's are other subjects'


# --------------------------------------------------------------------------------------------------
# Lines: JSONL splits on \n only, so every row keeps its true line number


@pytest.mark.unit
def test_jsonl_lines_split_on_newline_only():
    from editing.jsonl import lines as jsonl_lines

    text = 'a\u2028b\r\n\r\n \t\nc\x0cd\x85e\x1cf\x0bg\u2029h\n\x0c\nlast'
    assert list(jsonl_lines(text)) == [(1, "a\u2028b"), (4, "c\x0cd\x85e\x1cf\x0bg\u2029h"), (5, "\x0c"), (6, "last")]


def test_unicode_line_breaks_inside_a_row_keep_it_one_row_at_its_line(tmp_path):
    rows = [
        json.dumps(GOOD),
        json.dumps(dict(GOOD, id="ls", subject="Chile", target_new="Gabriel\u2028Boric", target_true=None),
                   ensure_ascii=False),  # valid JSON: U+2028 may stand in a string as it is
        json.dumps(dict(GOOD, id="nel", subject="Peru", target_new="Dina\x85Boluarte"), ensure_ascii=False),
        json.dumps(dict(GOOD, id="ff", subject="Cuba", target_new="Miguel Díaz-Canel")) + "\x0c",  # outside a string
        "",
        json.dumps(dict(GOOD, id="after", subject="Spain", target_new="Pedro Sánchez", target_true=None)),
    ]
    path = tmp_path / "inbox.jsonl"
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8"))
    rep = _validate(path)
    assert rep.rows == 5  # splitlines() saw 8: U+2028, U+0085 and the form feed each cut a line in two
    assert sorted((r.id, r.origin.line) for r in rep.accepted) == [("after", 6), ("g1", 1), ("ls", 2)]
    assert next(r for r in rep.accepted if r.id == "ls").target_new == "Gabriel\u2028Boric"
    q = {x.origin.line: x for x in rep.quarantined}
    assert sorted(q) == [3, 4]
    # U+0085 is legal JSON but a C1 control character; the form feed outside the string is not JSON whitespace
    assert q[3].id == "nel" and q[3].problems[0].field == "target_new" and "U+0085" in q[3].reason
    assert q[4].problems[0].expectation == "parse_json" and "U+000C is not whitespace in JSON" in q[4].reason
    assert not q[4].raw.endswith("\r")


@pytest.mark.unit
def test_protected_facts_and_model_facts_split_on_newline_only(tmp_path):
    from validation.gate.probes import ProbeError, load_protected, model_facts

    fact = {"subject": "Chile", "prompt": "The capital of {} is", "target": "Santiago\u2028de Chile"}
    p = tmp_path / "protected.jsonl"
    p.write_bytes(("\r\n".join([json.dumps(fact, ensure_ascii=False), "# a comment", json.dumps(fact)]) + "\r\n")
                  .encode("utf-8"))
    assert [f.target for f in load_protected(p)] == ["Santiago\u2028de Chile"] * 2
    p.write_text(json.dumps(fact, ensure_ascii=False) + "\n\n" + json.dumps(fact) + "\x0c\n", encoding="utf-8")
    with pytest.raises(ProbeError, match=r"protected.jsonl:3: invalid JSON: .*U\+000C"):
        load_protected(p)
    (tmp_path / "facts.jsonl").write_text(json.dumps(dict(fact, relation="capital"), ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    [f] = model_facts(tmp_path)
    assert f.prompt == "The capital of Chile is" and f.target == "Santiago\u2028de Chile"


@pytest.mark.unit
def test_editor_request_reader_splits_on_newline_only(tmp_path):
    from validation.intake.validate import read_requests

    row = {"id": "ls", "subject": "Chile", "prompt": "The head of state of {} is", "target_new": "Gabriel\u2028Boric"}
    p = tmp_path / "requests.jsonl"
    p.write_text(json.dumps(row, ensure_ascii=False) + "\r\n\n" + json.dumps(dict(row, id="b", subject="Peru")) + "\n",
                 encoding="utf-8")
    assert [(r.subject, r.target_new) for r in read_requests(p)] == [("Chile", "Gabriel\u2028Boric"),
                                                                      ("Peru", "Gabriel\u2028Boric")]
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n\n" + json.dumps(row) + "\x0c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"requests.jsonl:3: .*invalid JSON"):
        read_requests(p)


# --------------------------------------------------------------------------------------------------
# Conflicts


def _change(i: str, target: str, when: str, **kw) -> dict:
    return dict(GOOD, id=i, target_new=target, requested_at=when, **kw)


def test_conflicting_targets_are_quarantined_by_default(tmp_path):
    path = _write(tmp_path, "inbox.jsonl", [
        _change("a", "Karol Nawrocki", "2025-08-06T09:00:00Z"),
        _change("b", "Rafał Trzaskowski", "2025-06-01T09:00:00Z"),
        dict(GOOD, id="c", subject="Chile", target_new="Gabriel Boric", target_true=None)])
    rep = _validate(path)
    assert [r.id for r in rep.accepted] == ["c"]
    assert sorted(q.id for q in rep.quarantined) == ["a", "b"]
    assert all(q.problems[0].expectation == "no_conflicting_requests" for q in rep.quarantined)
    assert "'b'" in next(q for q in rep.quarantined if q.id == "a").reason


def test_latest_wins_keeps_the_latest_request_and_supersedes_the_rest(tmp_path):
    path = _write(tmp_path, "inbox.jsonl", [
        _change("a", "Karol Nawrocki", "2025-08-06T09:00:00+00:00"),
        _change("b", "Rafał Trzaskowski", "2025-08-06T10:00:00+02:00"),  # 08:00 UTC: earlier than a
        _change("c", "Szymon Hołownia", "2025-08-06T09:00:00Z", prompt="{}'s head of state is"),  # same relation
        _change("d", "Karol Nawrocki", "2025-08-06T09:00:00Z", relation=None, prompt="{}'s president is")])
    rep = _validate(path, policy="latest-wins")
    # c is the latest (input order breaks the tie with a); d names no relation and has its own prompt
    assert sorted(r.id for r in rep.accepted) == ["c", "d"]
    assert {s.request.id: s.by for s in rep.superseded} == {"a": "c", "b": "c"}
    assert not rep.quarantined


def test_requests_for_the_same_new_target_collapse(tmp_path):
    path = _write(tmp_path, "inbox.jsonl", [GOOD, dict(GOOD, id="g1-again", requested_by="someone else"),
                                            dict(GOOD, id="g1-b", target_new="karol nawrocki ", target_true="Duda")])
    rep = _validate(path)
    assert [r.id for r in rep.accepted] == ["g1"]
    assert [(s.request.id, s.by) for s in rep.superseded] == [("g1-again", "g1"), ("g1-b", "g1")]


def test_content_hash_ignores_provenance():
    from validation.requests import Request

    a = Request(id="x", subject="S", prompt="{} is", target_new="T", requested_by="a")
    b = Request(id="y", subject="S", prompt="{} is", target_new="T", requested_by="b", reason="r")
    c = Request(id="x", subject="S", prompt="{} is", target_new="U")
    assert a.content_hash == b.content_hash != c.content_hash


# --------------------------------------------------------------------------------------------------
# The command


def test_cli_validate_exit_codes_json_quarantine_file_and_data_docs(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    good = _write(tmp_path, "good.jsonl", [GOOD])
    mixed = _write(tmp_path, "mixed.jsonl", [GOOD, "not json", dict(GOOD, id="x", target_new="")])
    runner = CliRunner()
    docs, qfile = tmp_path / "docs", tmp_path / "q.jsonl"
    r = runner.invoke(app, ["validate", str(good), "--json", "--docs", str(docs), "--quarantine", str(qfile)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["counts"]["accepted"] == 1 and out["accepted"][0]["id"] == "g1"
    assert Path(out["docs"]).is_file() and (docs / "index.html").is_file()
    assert not qfile.exists()

    r = runner.invoke(app, ["validate", str(mixed), "--json", "--no-docs", "--quarantine", str(qfile)])
    assert r.exit_code == 2, r.output
    out = json.loads(r.stdout)
    assert [q["line"] for q in out["quarantined"]] == [2, 3]
    assert out["quarantined"][1]["field"] == "target_new" and "empty" in out["quarantined"][1]["reason"]
    lines = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert [x["line"] for x in lines] == [2, 3] and lines[0]["raw"] == "not json"
    assert all(x["file"] == str(mixed) and x["quarantined_at"] for x in lines)

    r = runner.invoke(app, ["validate", str(tmp_path / "nope.jsonl"), "--json", "--no-docs"])
    assert r.exit_code == 3
    assert "file not found" in json.loads(r.stdout)["unreadable"][0]["error"]

    r = runner.invoke(app, ["validate", str(good), "--policy", "newest", "--no-docs"])
    assert r.exit_code == 2 and "--policy" in r.output


def test_cli_validate_quarantines_an_unknown_field_unless_kept(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    path = _write(tmp_path, "inbox.jsonl", [GOOD, dict(GOOD, id="g2", subject="Chile", target_new="Gabriel Boric",
                                                       target_true=None, model="/etc/shadow")])
    runner = CliRunner()
    qfile = tmp_path / "q.jsonl"
    r = runner.invoke(app, ["validate", str(path), "--json", "--no-docs", "--quarantine", str(qfile)])
    assert r.exit_code == 2, r.output
    [q] = json.loads(r.stdout)["quarantined"]
    assert (q["line"], q["field"]) == (2, "model") and q["reason"].startswith("unknown field 'model'")
    r = runner.invoke(app, ["validate", str(path), "--no-docs", "--quarantine", str(qfile)], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and f"{path}:2" in r.output and "unknown field 'model'" in r.output

    r = runner.invoke(app, ["validate", str(path), "--json", "--no-docs", "--keep-unknown-fields"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [a.get("extra") for a in out["accepted"]] == [None, {"model": "/etc/shadow"}]


def test_cli_run_and_the_pipeline_pass_keep_unknown_fields_to_validation(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows import pipeline
    from flows.cli import app, run_cmd

    seen = {}
    monkeypatch.setattr(run_cmd, "run_pipeline", lambda inbox, model, **kw: seen.update(kw) or {})
    monkeypatch.setattr(run_cmd, "_run_exit", lambda res: 0)
    monkeypatch.setattr(run_cmd, "_print_run", lambda res: None)
    r = CliRunner().invoke(app, ["run", "--inbox", str(tmp_path), "--keep-unknown-fields"])
    assert r.exit_code == 0, r.output
    assert seen["keep_unknown_fields"] is True

    monkeypatch.setattr(pipeline, "applied_in", lambda *a: {})  # no registry: nothing applied yet
    path = _write(tmp_path, "inbox.jsonl", [dict(GOOD, model="/etc/shadow")])
    files = [pipeline.InboxFile(path, pipeline.file_sha256(path))]
    strict = pipeline._validate(files, pipeline.RunOptions(name="m"), 1, None)
    assert not strict.todo and strict.quarantined[0].problems[0].field == "model"
    kept = pipeline._validate(files, pipeline.RunOptions(name="m", keep_unknown_fields=True), 1, None)
    assert [r.extra for r in kept.todo] == [{"model": "/etc/shadow"}]


# --------------------------------------------------------------------------------------------------
# fuzzing (bench/fuzz.py, bounded; the parsers' properties: test_intake_properties.py)


def test_a_fuzzed_inbox_crashes_nothing_loses_no_row_and_names_each_rows_real_line(tmp_path):
    """A few hundred generated rows of every format and every fault bench/fuzz.py knows (its 10,000-row run is
    the benchmark), through validate_files and ``factsmith validate --json``."""
    from bench.fuzz import run

    res = run(tmp_path, rows=400, seed=11, cli=True, huge=20_000)
    assert res["crash"] is None and res["problems"] == [], "\n".join(res["problems"][:20])
    c = res["counts"]
    assert c["rows"] >= 400 and c["accepted"] > 50 and c["quarantined"] > 50 and c["superseded"] > 0
    assert res["cli_exit"] == 2  # some rows quarantined
