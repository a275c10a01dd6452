"""Fuzzing the intake: generated request files full of what real inboxes hold, through ``validate_files`` and
``factsmith validate``.

    python -m bench.fuzz [--rows 10000] [--seed 0] [--no-cli] [--out bench/results/fuzz.json]

Writes ``--rows`` request rows into files of every format factsmith reads -- native JSONL (most), CSV,
CounterFact, zsRE and MQuAKE JSON arrays -- each row valid or broken in one of the ways listed in
:data:`KINDS`: wrong types, nested values, huge strings, control and bidi characters, U+2028 / U+0085 / form
feeds inside and outside JSON strings, escaped lone surrogates, bytes that are not UTF-8, duplicate and
conflicting ids, rows copied, unknown fields, CRLF files, BOMs, CSV cells with quotes and newlines, ragged CSV
rows, truncated files. The generator knows how many rows each file holds and the line each row starts on;
:func:`check` holds the intake to it:

* nothing raises (a crash is any exception out of ``validate_files``, or an exit code other than 0 / 2 from
  ``factsmith validate``);
* every row read ends in exactly one of accepted / quarantined / superseded, per file and in total, and the
  rows read are the rows written;
* every row's line (accepted, quarantined or superseded) is the line its record starts on in the file, as an
  editor counts lines (``\\n``);
* what is accepted is clean text (no lone surrogates, no control characters in the fields an editor
  tokenizes) and the report, the quarantine file and the JSON output encode as UTF-8;
* ``factsmith validate --json`` reports the same counts.

``tests/test_validation_intake.py`` runs a bounded version (a few hundred rows) in CI.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "fuzz.json"

SUBJECTS = ["Poland", "Japan", "Kenya", "Peru", "Norway", "Chile", "Ghana", "Nepal", "Laos", "Fiji", "Oman",
            "Mali", "Cuba", "Iraq", "Togo", "Chad", "Iran", "Niue", "Guam", "Aruba"]
NAMES = ["Anna Berg", "Li Wei", "José Núñez", "Ngozi Okafor", "Søren Kierkegaard", "Zoë Ward", "Ömer Faruk"]
PROMPTS = ["The head of state of {} is", "{}'s head of government is", "The capital city of {} is",
           "In {}, the currency is", "The official language of {} is"]

# characters that break naive readers: C0/C1 controls, bidi overrides and isolates, zero-width, separators
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1c", "\x7f", "\x85", "\x9f"]
BIDI = ["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200f", "\u061c"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b"]

# what a native JSONL row may be (weights: how often)
KINDS = {
    "valid": 30, "valid_unicode": 4, "wrong_type": 6, "nested": 3, "huge": 2, "control_in_string": 4,
    "bidi_in_string": 3, "invisible_in_string": 2, "separator_in_string": 4, "separator_outside_string": 3,
    "lone_surrogate": 2, "not_utf8": 2, "duplicate_id": 3, "conflict": 3, "copy": 3, "unknown_field": 2,
    "missing_field": 3, "bad_prompt": 3, "empty_strings": 2, "bad_date": 2, "not_json": 2, "truncated_line": 2,
    "not_object": 2, "bom_in_line": 1, "whitespace_line": 1,
}


@dataclass
class FuzzFile:
    path: Path
    fmt: str  # as written: native, csv, counterfact, zsre, mquake
    lines: list[int] = field(default_factory=list)  # the start line of each row, in order
    kinds: Counter = field(default_factory=Counter)
    exact: bool = True  # the generator knows every row (a truncated array: only those before the cut)

    @property
    def rows(self) -> int:
        return len(self.lines)


class Gen:
    def __init__(self, seed: int, huge: int):
        self.r = random.Random(seed)
        self.n = 0
        self.huge = huge
        self.seen: list[dict] = []  # valid native records written, for duplicates and conflicts

    def _id(self) -> str:
        self.n += 1
        return f"fz-{self.n}"

    def _subject(self) -> str:
        return self.r.choice(SUBJECTS) + (f" {self.n}" if self.r.random() < 0.7 else "")

    def native(self) -> dict[str, Any]:
        subject = self._subject()
        rec = {"id": self._id(), "subject": subject, "prompt": self.r.choice(PROMPTS),
               "target_new": self.r.choice(NAMES), "target_true": self.r.choice(NAMES),
               "relation": self.r.choice(["head_of_state", "capital", "currency", None]),
               "requested_by": self.r.choice(["desk", "audit@example.org", None]),
               "requested_at": f"2025-{self.r.randint(1, 12):02d}-{self.r.randint(1, 28):02d}T09:00:00Z"}
        if self.r.random() < 0.3:
            rec["paraphrase_prompts"] = [f"Who leads {subject}? The answer:"]
        if self.r.random() < 0.2:
            rec["neighborhood_prompts"] = [{"prompt": "The head of state of Iceland is", "target": "Halla Tómasdóttir"}]
        return {k: v for k, v in rec.items() if v is not None}

    def _insert(self, s: str, chars: list[str]) -> str:
        i = self.r.randint(0, len(s))
        return s[:i] + self.r.choice(chars) + s[i:]

    def native_line(self, kind: str) -> str | bytes:
        """One JSONL line (no newline) of ``kind``; bytes where it must not be UTF-8."""
        r = self.r
        rec = self.native()
        text_field = r.choice(["subject", "target_new", "target_true", "prompt"])
        if kind == "valid_unicode":
            rec["subject"] = r.choice(["Côte d'Ivoire", "Türkiye", "日本", "Ελλάδα", "Россия", "מדינת ישראל"])
        elif kind == "wrong_type":
            rec[text_field] = r.choice([42, 3.5, True, None, ["a", "b"], {"str": "x"}])
        elif kind == "nested":
            rec[r.choice(["subject", "paraphrase_prompts", "neighborhood_prompts"])] = {"a": [{"b": {"c": [1, None]}}]}
        elif kind == "huge":
            rec[text_field] = "x" * self.huge
        elif kind == "control_in_string":
            rec[text_field] = self._insert(rec[text_field], CONTROL)
        elif kind == "bidi_in_string":
            rec[text_field] = self._insert(rec[text_field], BIDI)
        elif kind == "invisible_in_string":
            rec[text_field] = self._insert(rec[text_field], INVISIBLE)
        elif kind == "separator_in_string":
            rec[text_field] = self._insert(rec[text_field], ["\u2028", "\u2029", "\x85"])
        elif kind == "duplicate_id" and self.seen:
            rec["id"] = r.choice(self.seen)["id"]
        elif kind == "conflict" and self.seen:
            old = r.choice(self.seen)
            rec.update({k: old[k] for k in ("subject", "prompt") if k in old})
            rec["relation"] = old.get("relation", "head_of_state")
            rec["target_new"] = old["target_new"] + " Jr."
        elif kind == "copy" and self.seen:
            return json.dumps(r.choice(self.seen), ensure_ascii=False)
        elif kind == "unknown_field":
            rec[r.choice(["model", "target_neww", "path", "__proto__"])] = r.choice(["/etc/shadow", "x", 1])
        elif kind == "missing_field":
            rec.pop(r.choice(["subject", "prompt", "target_new"]), None)
        elif kind == "bad_prompt":
            rec["prompt"] = r.choice(["The head of state is", "{} and {} are", "", "{}", "{0} is"])
        elif kind == "empty_strings":
            rec[text_field] = r.choice(["", " ", "\t", "\u3000"])
        elif kind == "bad_date":
            rec["requested_at"] = r.choice(["yesterday", "2025-13-40", "2025-02-30T25:61:00Z", "", "0"])
        elif kind == "lone_surrogate":
            rec[text_field] = rec[text_field][:2] + "\ud800" + rec[text_field][2:]
            return json.dumps(rec)  # \ud800 escaped: valid JSON, not valid text
        line = json.dumps(rec, ensure_ascii=False)
        if kind in ("valid", "valid_unicode"):
            self.seen.append(rec)
        elif kind == "separator_outside_string":
            i = line.index(", ") + 1
            line = line[:i] + r.choice(SEPARATORS) + line[i:]
        elif kind == "not_utf8":
            b = line.encode("utf-8")
            i = b.index(b'"subject": "') + len(b'"subject": "')
            return b[:i] + r.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80\x80"]) + b[i:]
        elif kind == "not_json":
            line = r.choice(["hello world", "subject=Poland; target=X", "{'id': 1}", "{id: 1}", "NaN", "[1,"])
        elif kind == "truncated_line":
            line = line[:r.randint(1, len(line) - 2)]
        elif kind == "not_object":
            line = r.choice(['["a", "b"]', "42", '"a string"', "null", "true"])
        elif kind == "bom_in_line":
            line = "\ufeff" + line
        elif kind == "whitespace_line":
            line = r.choice(["\x0c", "\x0b", "\u00a0", "\u3000"])  # not JSON whitespace: a row, quarantined
        return line

    def kind(self) -> str:
        return self.r.choices(list(KINDS), weights=list(KINDS.values()))[0]


def _write_lines(path: Path, lines: list[str | bytes], crlf: bool, bom: bool, final_newline: bool,
                 blank_every: int, r: random.Random) -> list[int]:
    """Write ``lines`` (blank lines sprinkled in); the 1-based line each one starts on."""
    nl = b"\r\n" if crlf else b"\n"
    out = bytearray(b"\xef\xbb\xbf" if bom else b"")
    starts, n = [], 1
    for i, line in enumerate(lines):
        if blank_every and r.random() < 1 / blank_every:
            out += r.choice([b"", b"   ", b"\t"]) + nl
            n += 1
        starts.append(n)
        out += line if isinstance(line, bytes) else line.encode("utf-8")
        if i < len(lines) - 1 or final_newline:
            out += nl
        n += 1
    path.write_bytes(bytes(out))
    return starts


def native_file(g: Gen, path: Path, rows: int) -> FuzzFile:
    r = g.r
    kinds = ["valid"] + [g.kind() for _ in range(rows - 1)]  # the first row valid: it decides the format
    lines = [g.native_line(k) for k in kinds]
    ff = FuzzFile(path, "native", kinds=Counter(kinds))
    ff.lines = _write_lines(path, lines, crlf=r.random() < 0.25, bom=r.random() < 0.2,
                            final_newline=r.random() < 0.8, blank_every=20, r=r)
    return ff


def csv_file(g: Gen, path: Path, rows: int) -> FuzzFile:
    r = g.r
    header = ["id", "subject", "relation", "prompt", "target_new", "target_true", "paraphrase_prompts",
              "requested_by", "requested_at"]
    crlf = r.random() < 0.5
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(header)
    kinds = Counter()
    ff = FuzzFile(path, "csv")
    for i in range(rows):
        rec = g.native()
        kind = "valid" if i == 0 else r.choice(["valid", "valid", "quotes", "newline_in_cell", "crlf_in_cell",
                                                "comma_in_cell", "ragged", "control_in_cell", "bidi_in_cell",
                                                "separator_in_cell", "empty_cell", "json_list_cell", "bad_json_cell"])
        cells = [rec.get(h, "") for h in header]
        cells[6] = json.dumps(rec["paraphrase_prompts"]) if "paraphrase_prompts" in rec else ""
        if kind == "quotes":
            cells[4] = 'Karol "the" Nawrocki'
        elif kind == "newline_in_cell":
            cells[1] = cells[1] + "\nsecond line"
        elif kind == "crlf_in_cell":
            cells[8] = "2025-01-01\r\nT09:00:00Z"
        elif kind == "comma_in_cell":
            cells[4] = "Nawrocki, Karol"
        elif kind == "ragged":
            cells = cells[:r.randint(1, len(cells) - 1)] if r.random() < 0.5 else cells + ["extra", "more"]
        elif kind == "control_in_cell":
            cells[1] = g._insert(cells[1], CONTROL)
        elif kind == "bidi_in_cell":
            cells[4] = g._insert(cells[4], BIDI)
        elif kind == "separator_in_cell":
            cells[1] = g._insert(cells[1], SEPARATORS)
        elif kind == "empty_cell":
            cells[r.choice([1, 3, 4])] = ""
        elif kind == "json_list_cell":
            cells[6] = json.dumps([f"{cells[1]}'s leader is", "Who leads it?"])
        elif kind == "bad_json_cell":
            cells[6] = '["unclosed'
        start = buf.getvalue().count("\n") + 1
        w.writerow(cells)
        ff.lines.append(start)
        kinds[kind] += 1
    text = buf.getvalue()
    bom = r.random() < 0.2
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    ff.kinds = kinds
    return ff


def _cf(g: Gen, case: int) -> dict:
    rec = g.native()
    return {"case_id": case, "requested_rewrite": {"prompt": rec["prompt"], "relation_id": "P35", "subject":
                                                   rec["subject"], "target_new": {"str": rec["target_new"]},
                                                   "target_true": {"str": rec["target_true"]}},
            "paraphrase_prompts": [f"{rec['subject']} is led by"], "neighborhood_prompts": ["The capital of Peru is"]}


def _zsre(g: Gen, case: int) -> dict:
    rec = g.native()
    return {"case_id": case, "subject": rec["subject"], "src": f"Who is the head of state of {rec['subject']}?",
            "alt": rec["target_new"], "answers": [rec["target_true"]], "rephrase": f"Who leads {rec['subject']}?",
            "loc": "nq question: who wrote moby dick", "loc_ans": "Herman Melville"}


def _mquake(g: Gen, case: int, k: int) -> dict:
    rws = []
    for _ in range(k):
        rec = g.native()
        rws.append({"prompt": rec["prompt"], "relation_id": "P35", "subject": rec["subject"],
                    "target_new": {"str": rec["target_new"]}, "target_true": {"str": rec["target_true"]},
                    "question": f"Who is the head of state of {rec['subject']}?"})
    return {"case_id": case, "requested_rewrite": rws, "questions": ["Who leads it?"], "new_answer": "X"}


def array_file(g: Gen, path: Path, rows: int, fmt: str) -> FuzzFile:
    """A JSON array, one record per line; some records broken; maybe truncated in the middle of one."""
    r = g.r
    ff = FuzzFile(path, fmt)
    recs, nrows = [], []
    case = g.n * 10
    while sum(nrows) < rows:
        case += 1
        if fmt == "mquake":
            k = r.choice([1, 1, 2, 3, 4])
            rec = _mquake(g, case, k)
        else:
            rec = _cf(g, case) if fmt == "counterfact" else _zsre(g, case)
            k = 1
        kind = "valid" if not recs else r.choice(["valid", "valid", "valid", "wrong_type", "not_object", "missing",
                                                 "separator_in_string", "control_in_string"])
        if kind == "wrong_type":
            if fmt == "zsre":
                rec["alt"] = r.choice([7, ["x"], {"a": 1}])
            elif fmt == "mquake":
                rec["requested_rewrite"] = r.choice(["x", 7, {"a": 1}, []])
                k = 1
            else:
                rec["requested_rewrite"]["target_new"] = r.choice([7, ["x"], None])
        elif kind == "not_object":
            rec, k = r.choice([[1, 2], "text", 5, None]), 1
        elif kind == "missing":
            rec.pop("case_id", None)
            if fmt == "zsre":
                rec.pop("src", None)
        elif kind in ("separator_in_string", "control_in_string") and isinstance(rec, dict):
            chars = ["\u2028", "\x85", "\u2029"] if kind == "separator_in_string" else CONTROL
            if fmt == "zsre":
                rec["subject"] = g._insert(rec["subject"], chars)
            elif fmt == "counterfact":
                rec["requested_rewrite"]["subject"] = g._insert(rec["requested_rewrite"]["subject"], chars)
        ff.kinds[kind] += 1
        recs.append(rec)
        nrows.append(k)
    lines = ["["] + [json.dumps(x, ensure_ascii=False) + ("," if i < len(recs) - 1 else "")
                     for i, x in enumerate(recs)] + ["]"]
    text = "\n".join(lines) + "\n"
    if len(recs) > 2 and r.random() < 0.3:  # truncated: cut inside record j; records before it are read
        j = r.randint(1, len(recs) - 1)
        line_start = sum(len(x) + 1 for x in lines[:j + 1])
        cut = line_start + r.randint(1, max(1, len(lines[j + 1]) - 3))
        text = text[:cut]
        ff.kinds["truncated_file"] += 1
        ff.exact = False
        for i in range(j):
            ff.lines += [i + 2] * nrows[i]
        ff.lines.append(j + 2)  # the broken record: one row, quarantined
    else:
        for i in range(len(recs)):
            ff.lines += [i + 2] * nrows[i]
    path.write_text(text, encoding="utf-8")
    return ff


def generate(out_dir: Path, rows: int, seed: int = 0, huge: int = 200_000) -> list[FuzzFile]:
    """Request files holding ``rows`` rows in all, in ``out_dir``."""
    g = Gen(seed, huge)
    r = g.r
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[FuzzFile] = []
    left = rows
    i = 0
    while left > 0:
        i += 1
        n = min(left, r.randint(20, max(21, rows // 15)))
        kind = r.choices(["native", "csv", "counterfact", "zsre", "mquake"], weights=[60, 15, 10, 7, 8])[0]
        if kind == "native":
            ff = native_file(g, out_dir / f"f{i:03d}.jsonl", n)
        elif kind == "csv":
            ff = csv_file(g, out_dir / f"f{i:03d}.csv", n)
        else:
            ff = array_file(g, out_dir / f"f{i:03d}-{kind}.json", n, kind)
        files.append(ff)
        left -= ff.rows
    return files


# --------------------------------------------------------------------------------------------------
# the checks


def _has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


def check(files: list[FuzzFile], report) -> list[str]:
    """What the intake got wrong on ``files`` (an empty list: nothing)."""
    from validation.requests import TEXT_FIELDS

    problems: list[str] = []
    by_path = {str(f.path): f for f in files}
    read = {d["file"]: d["rows"] for d in report.files}
    for u in report.unreadable:
        problems.append(f"{u['file']}: the whole file was refused: {u['error']}")
    ended: dict[str, list[tuple[int, int, str]]] = {p: [] for p in by_path}  # (record, line, state)
    for r in report.accepted:
        ended[r.origin.file].append((r.origin.record, r.origin.line, "accepted"))
    for q in report.quarantined:
        ended[q.origin.file].append((q.origin.record, q.origin.line, "quarantined"))
    for s in report.superseded:
        o = s.request.origin
        ended[o.file].append((o.record, o.line, "superseded"))
    total = len(report.accepted) + len(report.quarantined) + len(report.superseded)
    if total != report.rows:
        problems.append(f"accepted + quarantined + superseded = {total}, rows read {report.rows}")
    for p, ff in by_path.items():
        got = ended[p]
        records = Counter(rec for rec, _, _ in got)
        twice = [rec for rec, n in records.items() if n > 1]
        if twice:
            problems.append(f"{p}: rows {twice[:5]} ended in more than one state")
        if read.get(p) != len(got):
            problems.append(f"{p}: {read.get(p)} rows read, {len(got)} ended")
        if read.get(p) != ff.rows:
            problems.append(f"{p}: {read.get(p)} rows read, {ff.rows} written ({ff.fmt})")
        for rec, line, state in got:
            if rec < len(ff.lines) and ff.lines[rec] != line:
                problems.append(f"{p}: row {rec} ({state}) said to start on line {line}, it starts on {ff.lines[rec]}")
    for r in report.accepted:
        for name in TEXT_FIELDS:
            v = getattr(r, name, None)
            if isinstance(v, str) and (_has_surrogate(v) or any(c in v for c in CONTROL if c not in "\x85")):
                problems.append(f"{r.origin.where()}: accepted with {name}={v[:40]!r}")
    try:
        json.dumps(report.to_json(), ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as e:
        problems.append(f"the report does not encode as UTF-8 JSON: {e}")
    return problems


def run(out_dir: Path, rows: int, seed: int, cli: bool = True, huge: int = 200_000) -> dict[str, Any]:
    """Generate, validate (API, then ``factsmith validate --json``), check; the figures."""
    from validation.intake.validate import validate_files, write_quarantine

    files = generate(out_dir / "inbox", rows, seed, huge)
    kinds = Counter()
    for f in files:
        kinds.update({f"{f.fmt}:{k}": n for k, n in f.kinds.items()})
    paths = [f.path for f in files]
    t0 = time.perf_counter()
    crash = None
    try:
        report = validate_files(paths, policy="latest-wins")
    except Exception as e:  # noqa: BLE001 -- the figure: a crash
        import traceback

        crash = "".join(traceback.format_exception(e))[-3000:]
        return {"rows": sum(f.rows for f in files), "files": len(files), "crash": crash, "problems": [crash]}
    seconds = time.perf_counter() - t0
    problems = check(files, report)
    try:
        write_quarantine(report.quarantined, out_dir / "quarantine.jsonl")
    except Exception as e:  # noqa: BLE001
        problems.append(f"write_quarantine: {type(e).__name__}: {e}")
    res: dict[str, Any] = {
        "rows": sum(f.rows for f in files), "files": len(files),
        "formats": dict(Counter(f.fmt for f in files)), "kinds": dict(sorted(kinds.items())),
        "counts": report.counts(), "reasons": report.reasons(), "seconds": round(seconds, 2), "crash": None,
        "problems": problems}
    if cli:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FACTSMITH_HOME": str(out_dir / "home")}
        p = subprocess.run([sys.executable, "-m", "flows.cli", "validate", *map(str, paths), "--policy",
                            "latest-wins", "--no-docs", "--json", "--quarantine", str(out_dir / "q-cli.jsonl")],
                           capture_output=True, env=env, cwd=REPO)
        out = p.stdout.decode("utf-8", "replace").strip().split("\n")
        res["cli_exit"] = p.returncode
        if p.returncode not in (0, 2) or not out:
            problems.append(f"factsmith validate exited {p.returncode}: {p.stderr.decode('utf-8', 'replace')[-2000:]}")
        else:
            counts = json.loads(out[-1])["counts"]
            if counts != report.counts():
                problems.append(f"factsmith validate counted {counts}, validate_files {report.counts()}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cli", action="store_true", help="skip factsmith validate")
    ap.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        work = args.keep or Path(tmp)
        res = run(work, args.rows, args.seed, cli=not args.no_cli)
    print(f"{res['rows']} rows in {res['files']} files {res.get('formats', {})}")
    if res.get("counts"):
        c = res["counts"]
        print(f"accepted {c['accepted']}, quarantined {c['quarantined']}, superseded {c['superseded']}, "
              f"unreadable files {c['unreadable_files']}; validate_files {res['seconds']} s; "
              f"factsmith validate exit {res.get('cli_exit')}")
        print("quarantined by reason: " + ", ".join(f"{k} {v}" for k, v in res["reasons"].items()))
    print(f"crashes: {1 if res['crash'] else 0}; problems: {len(res['problems'])}")
    for p in res["problems"][:30]:
        print("  " + p)
    res["meta"] = {"date": time.strftime("%Y-%m-%d"), "seed": args.seed,
                   "command": f"python -m bench.fuzz --rows {args.rows} --seed {args.seed}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    sys.exit(1 if res["problems"] else 0)


if __name__ == "__main__":
    main()
