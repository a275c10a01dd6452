"""Properties of the request readers (hypothesis): whatever text a field holds -- U+2028, U+0085, form feeds,
CR, bidi marks, quotes, commas, newlines in CSV cells -- each record written is one row, on the line it
starts on, its fields as written."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st


# any text JSON can carry, U+2028 / U+0085 / form feeds / CR / bidi marks included (lone surrogates are refused
# on purpose: test_validation_intake.py)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_RECORD = st.fixed_dictionaries({"id": st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), "subject": _TEXT,
                                 "prompt": _TEXT, "target_new": _TEXT})


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_RECORD, min_size=1, max_size=8), blanks=st.lists(st.sampled_from(["", "  ", "\t", "\r"]),
                                                                         max_size=8), crlf=st.booleans())
def test_jsonl_rows_are_the_lines_written_whatever_their_text(tmp_path_factory, records, blanks, crlf):
    from validation.intake.formats import parse_file

    nl = "\r\n" if crlf else "\n"
    lines, starts = [], []
    for i, rec in enumerate(records):
        if i < len(blanks):
            lines.append(blanks[i])
        lines.append(json.dumps(rec, ensure_ascii=False))
        starts.append(len(lines))
    path = tmp_path_factory.mktemp("prop") / "p.jsonl"
    path.write_bytes(nl.join(lines).encode("utf-8"))
    fmt, rows = parse_file(path, "native")
    assert [r.origin.line for r in rows] == starts
    assert [r.raw for r in rows] == records  # every character kept, none a line break to the reader


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_RECORD, min_size=1, max_size=8), crlf=st.booleans())
def test_csv_rows_are_the_records_written_whatever_their_cells(tmp_path_factory, records, crlf):
    import csv
    import io

    from validation.intake.formats import parse_file

    buf = io.StringIO(newline="")
    # RFC 4180: a cell holding CR or LF is quoted. Python's writer quotes only the line terminator's characters
    # (with "\n" a bare CR goes out unquoted, and every reader ends the record there), so LF files quote all
    w = csv.writer(buf, lineterminator="\r\n") if crlf else csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(["id", "subject", "prompt", "target_new"])
    starts = []
    for rec in records:
        starts.append(buf.getvalue().count("\n") + 1)
        w.writerow([rec["id"], rec["subject"], rec["prompt"], rec["target_new"]])
    path = tmp_path_factory.mktemp("prop") / "p.csv"
    path.write_bytes(buf.getvalue().encode("utf-8"))
    fmt, rows = parse_file(path)
    assert [r.origin.line for r in rows] == starts  # no row is blank: every id is a word
    assert [r.raw for r in rows] == records
