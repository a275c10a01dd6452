"""Parsers: every request format factsmith ingests, auto-detected, into :class:`~validation.requests.Row`.

| format | layout | one record gives |
|---|---|---|
| ``native`` | JSONL, one request an object (../shared/DESIGN.md) | one request |
| ``csv`` | a header row with the native field names; list fields as JSON in the cell | one request |
| ``counterfact`` | ROME's layout: ``requested_rewrite`` object, ``paraphrase_prompts``, ``neighborhood_prompts`` | one request; neighbours expect ``target_true`` |
| ``counterfact-flat`` | ``prompt`` with the subject inline, ``ground_truth``, ``rephrase_prompt``, ``locality_prompt`` | one request |
| ``zsre`` | MEND split: ``src``, ``alt``, ``answers``, ``rephrase``, ``loc``, ``loc_ans`` | one request |
| ``mquake`` | ``requested_rewrite`` list, multi-hop ``questions`` with ``new_answer`` | one request per rewrite; the questions become portability probes |

A file is a JSON array or JSONL (any format), or CSV (by its ``.csv`` suffix). The format comes from the
keys of the first record unless forced. Parsing never stops at a bad record: a line that is not JSON, a
record that is not an object, a field of the wrong type, or a native field that is not one of
:data:`~validation.requests.NATIVE_FIELDS` becomes a row with ``problems`` (quarantined by validation with
its file and line). With ``keep_unknown_fields`` a native record's unknown fields are kept under ``extra``
instead; dataset records are never checked for them (their own fields are many). Only a file that cannot be
read at all (missing, empty, not JSON at its start) raises :class:`FileFormatError`. Bytes that are not UTF-8
and JSON-escaped lone surrogates quarantine the record that holds them (``text_encoding``), not the file.

JSONL lines end at ``\\n`` only (:func:`editing.jsonl.lines`), so line numbers are those of an editor and ``wc -l``.

Dataset ids are prefixed with the dataset (``counterfact-2``, ``mquake-7-1`` for its first rewrite; zsRE
has none: ``<file stem>-<record>``), so that one batch can mix datasets.

Prompts with the subject written inline (CounterFact flat, zsRE, or a native prompt without ``{}``) become
templates: the first occurrence of the subject is replaced by ``{}``. Dataset formats collapse runs of tabs
and newlines inside a field into one space (CounterFact has a few); native and CSV fields are kept as
written, so a stray control character there is quarantined.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from editing.jsonl import json_error
from editing.jsonl import lines as jsonl_lines

from ..requests import LIST_FIELDS, NATIVE_FIELDS, Origin, Problem, Row, TEXT_FIELDS

FORMATS = ("native", "csv", "counterfact", "counterfact-flat", "zsre", "mquake")
RAW_TEXT_LIMIT = 2000  # characters of an unparseable line kept in the quarantine record


class FileFormatError(ValueError):
    """The file cannot be read at all (the message names it); no row of it was accepted."""


def detect_format(record: Any) -> str:
    """The format of a file from the keys of its first object record."""
    if not isinstance(record, dict):
        return "native"
    rr = record.get("requested_rewrite")
    if isinstance(rr, list):
        return "mquake"
    if isinstance(rr, dict):
        return "counterfact"
    if "src" in record and "alt" in record:
        return "zsre"
    if any(k in record for k in ("ground_truth", "rephrase_prompt", "locality_prompt")):
        return "counterfact-flat"
    return "native"


def parse_file(path: str | Path, fmt: str | None = None, *,
               keep_unknown_fields: bool = False) -> tuple[str, list[Row]]:
    """(format, rows) of a request file; ``fmt`` forces the format (one of :data:`FORMATS`).

    A native record's unknown field makes a row problem, or with ``keep_unknown_fields`` goes to ``extra``."""
    p = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise FileFormatError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileFormatError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise FileFormatError(f"{p}: is a directory, expected a request file") from None
    except OSError as e:
        raise FileFormatError(f"{p}: cannot read: {e.strerror}") from None
    # bytes that are not UTF-8 become U+DC80-U+DCFF (surrogateescape): the rows that hold them are quarantined
    # (:func:`_not_text`), the others read -- one bad byte does not refuse a whole inbox file
    text = data.decode("utf-8", "surrogateescape")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise FileFormatError(f"{p}: the file is empty")
    name = str(p)
    if fmt == "csv" or (fmt is None and p.suffix.lower() == ".csv"):
        return "csv", list(_csv_rows(name, text, keep_unknown_fields))
    records = list(_json_records(name, text))
    if fmt is None:
        first = next((r for _, r, ok in records if ok and isinstance(r, dict)), None)
        fmt = detect_format(first)
    convert = _CONVERTERS[fmt]
    rows: list[Row] = []
    for line, rec, ok in records:
        origin = Origin(name, line, len(rows), fmt)
        bad = _not_text(rec)
        if not ok:
            why = rec["error"] + (f"; {bad}" if bad else "")
            rows.append(Row(origin, _clean(rec["text"]), problems=[Problem("(record)", "parse_json", why)]))
        elif bad:
            rows.append(Row(origin, _clean(rec), problems=[Problem("(record)", "text_encoding", bad)]))
        elif not isinstance(rec, dict):
            rows.append(Row(origin, rec, problems=[Problem(
                "(record)", "record_is_object", f"expected a JSON object, found {_kind(rec)}")]))
        else:
            for fields, problems in convert(rec, _Ctx(p, len(rows), keep_unknown_fields)):
                rows.append(Row(Origin(name, line, len(rows), fmt), rec, fields, problems))
    return fmt, rows


# --------------------------------------------------------------------------------------------------
# Reading records with their line numbers


def _strings_of(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings_of(k)
            yield from _strings_of(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings_of(v)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_text(obj: Any) -> str | None:
    """Why a record is not text, or None: a byte that is not UTF-8 (decoded as U+DC80-U+DCFF by
    surrogateescape), or a lone surrogate written as a JSON escape (``"\\ud800"``: valid JSON, not text; it
    could never be written back as UTF-8)."""
    for s in _strings_of(obj):
        m = _SURROGATE.search(s)
        if m:
            c = ord(m.group())
            if 0xDC80 <= c <= 0xDCFF:
                return f"byte 0x{c - 0xDC00:02X} is not UTF-8 (at character {m.start() + 1} of a value)"
            return f"U+{c:04X} is a lone surrogate, not text (at character {m.start() + 1} of a value)"
    return None


def _clean(obj: Any) -> Any:
    """``obj`` with every surrogate replaced by U+FFFD: the raw record a quarantine file can hold."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, dict):
        return {_clean(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_records(name: str, text: str) -> Iterator[tuple[int, Any, bool]]:
    """(line, record, ok) for a JSON array or JSONL text; a record that is not JSON comes with ok=False and
    ``{"error", "text"}``. A file whose first character is neither ``[`` nor ``{`` (nor any JSON) fails."""
    start = len(text) - len(text.lstrip())
    if text[start] == "[":
        yield from _array_records(name, text, start)
        return
    if text[start] == "{" and text.count("\n", start, len(text.rstrip())) > 0:
        try:  # one pretty-printed object over several lines is one record, not broken JSONL
            whole = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            yield _line_of(text, start), whole, True
            return
    elif text[start] != "{":
        try:
            json.loads(text.split("\n")[_line_of(text, start) - 1])
        except json.JSONDecodeError:
            raise FileFormatError(f"{name}: not JSON, JSONL or CSV (line {_line_of(text, start)} starts with "
                                  f"{text[start:start + 20]!r}); pass --format csv for a CSV file") from None
    for n, raw in jsonl_lines(text):
        try:
            yield n, json.loads(raw), True
        except json.JSONDecodeError as e:
            yield n, {"error": f"invalid JSON: {json_error(e)}", "text": raw[:RAW_TEXT_LIMIT]}, False


def _array_records(name: str, text: str, start: int) -> Iterator[tuple[int, Any, bool]]:
    """Elements of a JSON array one by one, so that a truncated or broken element loses only itself and
    what follows it in the array (which cannot be told apart from it), never the elements before."""
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, start + 1).end()
    if text.startswith("]", i):
        return
    while i < len(text):
        try:
            rec, j = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield _line_of(text, i), {"error": f"invalid JSON in the array: {e.msg} (line {e.lineno}, column "
                                               f"{e.colno}); the rest of the file could not be read",
                                      "text": text[i:i + RAW_TEXT_LIMIT]}, False
            return
        yield _line_of(text, i), rec, True
        i = ws.match(text, j).end()
        if text.startswith(",", i):
            i = ws.match(text, i + 1).end()
        elif text.startswith("]", i):
            rest = text[i + 1:].strip()
            if rest:
                yield _line_of(text, i + 1), {"error": "text after the end of the JSON array",
                                              "text": rest[:RAW_TEXT_LIMIT]}, False
            return
        else:
            yield _line_of(text, i), {"error": "expected ',' or ']' between array elements",
                                      "text": text[i:i + RAW_TEXT_LIMIT]}, False
            return
    yield _line_of(text, len(text)), {"error": "the JSON array is not closed (truncated file?)", "text": ""}, False


_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class _CsvLines:
    """The lines the csv module reads (split at CR, LF and CRLF, as ``io.StringIO(newline="")`` does), counting
    the LFs consumed: a record's line is 1 + the LFs before it, as an editor counts -- ``reader.line_num``
    counts a CR inside a quoted cell as a line too, and every later row's line would be off by one."""

    def __init__(self, text: str):
        self._it = _CSV_LINE.finditer(text)
        self.newlines = 0

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        line = next(self._it).group()
        self.newlines += line.count("\n")
        return line


def _csv_rows(name: str, text: str, keep_unknown_fields: bool = False) -> Iterator[Row]:
    lines = _CsvLines(text)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except csv.Error as e:
        raise FileFormatError(f"{name}:1: cannot read the CSV header: {e}") from None
    header = [h.strip() for h in header]
    if "subject" not in header and "prompt" not in header:
        raise FileFormatError(f"{name}:1: CSV header {header!r} names none of the request fields "
                              f"(id, subject, prompt, target_new, ...)")
    index = 0
    start = lines.newlines + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Row(Origin(name, start, index, "csv"), None,
                      problems=[Problem("(record)", "parse_csv", f"cannot read the CSV row: {e}")])
            return
        origin = Origin(name, start, index, "csv")
        start = lines.newlines + 1
        if not any(c.strip() for c in cells):
            continue
        index += 1
        bad = _not_text(cells)
        if bad:
            yield Row(origin, _clean(cells), problems=[Problem("(record)", "text_encoding", bad)])
            continue
        raw = dict(zip(header, cells))
        if len(cells) != len(header):
            yield Row(origin, cells, problems=[Problem(
                "(record)", "csv_row_width", f"the row has {len(cells)} cells, the header {len(header)}")])
            continue
        rec: dict[str, Any] = {k: (v if v != "" else None) for k, v in raw.items()}
        problems: list[Problem] = []
        for name_ in LIST_FIELDS:
            v = rec.get(name_)
            if isinstance(v, str):
                if v.lstrip().startswith("["):
                    try:
                        rec[name_] = json.loads(v)
                    except json.JSONDecodeError as e:
                        problems.append(Problem(name_, "parse_json", f"field '{name_}': invalid JSON: {e.msg}"))
                        rec[name_] = None
                elif name_ == "paraphrase_prompts":
                    rec[name_] = [v]
                else:
                    problems.append(Problem(name_, "parse_json",
                                            f"field '{name_}': expected a JSON list of {{prompt, target}} objects"))
                    rec[name_] = None
        for fields, more in _native(rec, _Ctx(Path(name), origin.record, keep_unknown_fields)):
            yield Row(origin, raw, fields, problems + more)


# --------------------------------------------------------------------------------------------------
# Converters: one record -> [(fields, problems)]


class _Ctx:
    """What a converter may need besides the record: the file (for ids derived from its name), and whether a
    native record's unknown fields are kept (under ``extra``) rather than a problem."""

    def __init__(self, path: Path, record: int, keep_unknown_fields: bool = False):
        self.path, self.record, self.keep_unknown_fields = path, record, keep_unknown_fields

    def derived_id(self, suffix: str = "") -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.stem).strip("._-") or "requests"
        return f"{stem}-{self.record}{suffix}"


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


_WS = re.compile(r"[\t\r\n]+")


class _Fields:
    """Collects normalised fields and the problems found while reading them."""

    def __init__(self, collapse_ws: bool):
        self.fields: dict[str, Any] = {k: None for k in TEXT_FIELDS}
        self.fields.update({k: () for k in LIST_FIELDS})
        self.fields["extra"] = {}
        self.problems: list[Problem] = []
        self.collapse_ws = collapse_ws

    def _norm(self, v: str) -> str:
        return _WS.sub(" ", v).strip() if self.collapse_ws and _WS.search(v) else v

    def text(self, name: str, value: Any, label: str | None = None, allow_number: bool = False) -> None:
        label = label or name
        if value is None:
            return
        if allow_number and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.problems.append(Problem(name, "field_type", f"field '{label}': expected a string, found {_kind(value)}"))
            return
        self.fields[name] = self._norm(value)

    def strings(self, name: str, value: Any, label: str | None = None) -> None:
        label = label or name
        if value is None:
            return
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            self.problems.append(Problem(name, "field_type", f"field '{label}': expected a list of strings"))
            return
        self.fields[name] = tuple(self._norm(x) for x in value)

    def pairs(self, name: str, value: Any, label: str | None = None) -> None:
        """A list of {"prompt", "target"} objects."""
        label = label or name
        if value is None:
            return
        if not isinstance(value, list) or not all(
                isinstance(x, dict) and isinstance(x.get("prompt"), str) and isinstance(x.get("target"), str)
                for x in value):
            self.problems.append(Problem(name, "field_type",
                                         f"field '{label}': expected a list of {{prompt, target}} objects"))
            return
        self.fields[name] = tuple((self._norm(x["prompt"]), self._norm(x["target"])) for x in value)

    def neighbour(self, rec: dict, prompt_key: str, target_key: str) -> None:
        """One neighbour from two flat fields (CounterFact's locality_prompt, zsRE's loc)."""
        lp, lt = rec.get(prompt_key), rec.get(target_key)
        if lp is None and lt is None:
            return
        if isinstance(lp, str) and isinstance(lt, str):
            self.pairs("neighborhood_prompts", [{"prompt": lp, "target": lt}])
        else:
            self.problems.append(Problem(prompt_key, "field_type",
                                         f"fields '{prompt_key}' and '{target_key}': expected two strings"))

    def template(self) -> None:
        """A prompt with the subject inline (and no ``{}``) becomes a template."""
        prompt, subject = self.fields.get("prompt"), self.fields.get("subject")
        if prompt and subject and subject.strip() and "{}" not in prompt and subject in prompt:
            self.fields["prompt"] = prompt.replace(subject, "{}", 1)

    def done(self) -> list[tuple[dict[str, Any], list[Problem]]]:
        self.template()
        return [(self.fields, self.problems)]


def _native(rec: dict, ctx: _Ctx) -> list[tuple[dict[str, Any], list[Problem]]]:
    f = _Fields(collapse_ws=False)
    unknown = sorted(k for k in rec if k not in NATIVE_FIELDS)
    if unknown and ctx.keep_unknown_fields:
        f.fields["extra"] = {k: rec[k] for k in unknown}
    elif unknown:
        # an audited intake refuses what it does not understand rather than drop it unseen (a typo like
        # 'target_neww', or a field that asks for what no request may ask: "model": "/etc/shadow")
        names = ", ".join(repr(k) for k in unknown)
        f.problems.append(Problem(", ".join(unknown), "known_fields",
                                  f"unknown field{'s' if len(unknown) > 1 else ''} {names}: a native request has "
                                  f"only {', '.join(NATIVE_FIELDS)} (--keep-unknown-fields keeps others under "
                                  f"'extra')"))
    for name in TEXT_FIELDS:
        f.text(name, rec.get(name), allow_number=name == "id")
    f.strings("paraphrase_prompts", rec.get("paraphrase_prompts"))
    for name in ("neighborhood_prompts", "portability_prompts", "attribute_prompts"):
        f.pairs(name, rec.get(name))
    return f.done()


def _dataset_id(prefix: str, case_id: Any) -> Any:
    """Dataset ids are small integers that collide across datasets: ``counterfact-2``, ``mquake-7``."""
    if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
        return case_id  # None, or a wrong type that the field check reports
    return f"{prefix}-{case_id}"


def _str_field(v: Any) -> Any:
    """CounterFact / MQuAKE targets are {"str": ..., "id": ...}."""
    return v.get("str") if isinstance(v, dict) else v


def _counterfact(rec: dict, ctx: _Ctx) -> list[tuple[dict[str, Any], list[Problem]]]:
    f = _Fields(collapse_ws=True)
    rr = rec.get("requested_rewrite")
    if not isinstance(rr, dict):
        f.problems.append(Problem("requested_rewrite", "field_type",
                                  f"field 'requested_rewrite': expected an object, found {_kind(rr)}"))
        rr = {}
    f.text("id", _dataset_id("counterfact", rec.get("case_id")), "case_id", allow_number=True)
    f.text("subject", rr.get("subject"), "requested_rewrite.subject")
    f.text("prompt", rr.get("prompt"), "requested_rewrite.prompt")
    f.text("target_new", _str_field(rr.get("target_new")), "requested_rewrite.target_new.str")
    f.text("target_true", _str_field(rr.get("target_true")), "requested_rewrite.target_true.str")
    f.text("relation", rr.get("relation_id"), "requested_rewrite.relation_id")
    f.strings("paraphrase_prompts", rec.get("paraphrase_prompts"))
    neigh = rec.get("neighborhood_prompts")
    truth = f.fields["target_true"]
    if isinstance(neigh, list) and all(isinstance(x, str) for x in neigh) and truth:
        # CounterFact's neighbours are other subjects that share the true attribute
        f.pairs("neighborhood_prompts", [{"prompt": x, "target": truth} for x in neigh])
    elif neigh is not None:
        f.pairs("neighborhood_prompts", neigh)
    f.fields["source"] = "counterfact"
    return f.done()


def _counterfact_flat(rec: dict, ctx: _Ctx) -> list[tuple[dict[str, Any], list[Problem]]]:
    f = _Fields(collapse_ws=True)
    f.text("id", _dataset_id("counterfact", rec.get("case_id", rec.get("id"))), "case_id", allow_number=True)
    for name, key in (("subject", "subject"), ("prompt", "prompt"), ("target_new", "target_new"),
                      ("target_true", "ground_truth")):
        f.text(name, _str_field(rec.get(key)), key)
    f.strings("paraphrase_prompts", rec.get("rephrase_prompt"), "rephrase_prompt")
    f.neighbour(rec, "locality_prompt", "locality_ground_truth")
    f.fields["source"] = "counterfact"
    return f.done()


def _zsre(rec: dict, ctx: _Ctx) -> list[tuple[dict[str, Any], list[Problem]]]:
    f = _Fields(collapse_ws=True)
    given = rec.get("case_id", rec.get("id"))
    f.text("id", _dataset_id("zsre", given) if given is not None else ctx.derived_id(), "id", allow_number=True)
    f.text("subject", rec.get("subject"))
    f.text("prompt", rec.get("src"), "src")
    f.text("target_new", rec.get("alt"), "alt")
    answers = rec.get("answers")
    if isinstance(answers, list) and answers:
        f.text("target_true", answers[0], "answers[0]")
    elif answers is not None:
        f.problems.append(Problem("target_true", "field_type", "field 'answers': expected a non-empty list"))
    f.strings("paraphrase_prompts", rec.get("rephrase"), "rephrase")
    f.neighbour(rec, "loc", "loc_ans")
    f.fields["source"] = "zsre"
    return f.done()


def _mquake(rec: dict, ctx: _Ctx) -> list[tuple[dict[str, Any], list[Problem]]]:
    out = []
    case = _dataset_id("mquake", rec.get("case_id")) or ctx.derived_id()
    questions, new_answer = rec.get("questions"), rec.get("new_answer")
    rewrites = rec.get("requested_rewrite")
    if not isinstance(rewrites, list):
        f = _Fields(collapse_ws=True)
        f.problems.append(Problem("requested_rewrite", "field_type",
                                  f"field 'requested_rewrite': expected a list, found {_kind(rewrites)}"))
        return [(f.fields, f.problems)]
    for j, rr in enumerate(rewrites, start=1):
        f = _Fields(collapse_ws=True)
        f.text("id", f"{case}-{j}" if isinstance(case, (int, str)) else None, "case_id")
        if not isinstance(rr, dict):
            f.problems.append(Problem("requested_rewrite", "field_type",
                                      f"requested_rewrite[{j - 1}]: expected an object, found {_kind(rr)}"))
            out.append((f.fields, f.problems))
            continue
        f.text("subject", rr.get("subject"), f"requested_rewrite[{j - 1}].subject")
        f.text("prompt", rr.get("prompt"), f"requested_rewrite[{j - 1}].prompt")
        f.text("target_new", _str_field(rr.get("target_new")), f"requested_rewrite[{j - 1}].target_new.str")
        f.text("target_true", _str_field(rr.get("target_true")), f"requested_rewrite[{j - 1}].target_true.str")
        f.text("relation", rr.get("relation_id"), f"requested_rewrite[{j - 1}].relation_id")
        if rr.get("question") is not None:
            f.strings("paraphrase_prompts", rr.get("question"), f"requested_rewrite[{j - 1}].question")
        if questions is not None:
            if isinstance(questions, list) and all(isinstance(q, str) for q in questions) and isinstance(new_answer, str):
                f.pairs("portability_prompts", [{"prompt": q, "target": new_answer} for q in questions])
            else:
                f.problems.append(Problem("questions", "field_type",
                                          "fields 'questions' and 'new_answer': expected a list of strings and a string"))
        f.fields["source"] = "mquake"
        out.extend(f.done())
    if not out:
        f = _Fields(collapse_ws=True)
        f.problems.append(Problem("requested_rewrite", "field_type", "field 'requested_rewrite': the list is empty"))
        out.append((f.fields, f.problems))
    return out


_CONVERTERS: dict[str, Callable[[dict, _Ctx], list[tuple[dict[str, Any], list[Problem]]]]] = {
    "native": _native,
    "counterfact": _counterfact,
    "counterfact-flat": _counterfact_flat,
    "zsre": _zsre,
    "mquake": _mquake,
}
