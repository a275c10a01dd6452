"""Validate request files: parse, check with Great Expectations, resolve conflicts; lose nothing.

    report = validate_files([path], policy="reject", docs_dir=home / "validation" / "docs")
    report.accepted      # Request objects, ready to batch
    report.quarantined   # Quarantined rows, each with file, line, field, expectation, reason, raw record
    report.superseded    # duplicates and (under latest-wins) older requests for the same fact

Every row of every readable file ends in exactly one of the three lists. The steps:

1. :func:`validation.intake.formats.parse_file` -- rows, or rows with parse problems (quarantined as they are),
   among them a native record with a field the contract does not know (``keep_unknown_fields=True`` keeps
   such fields under ``Request.extra`` instead);
2. rows identical to an earlier row (the same file dropped twice) collapse into it and share its fate;
3. the GX suite of :mod:`validation.intake.expectations` over one pandas DataFrame of all rows (one GX run,
   ephemeral context); every failed expectation is mapped back to its rows by ``request_id``;
4. :func:`validation.intake.conflicts.resolve` over the accepted requests of all files together.

A file that cannot be read at all is listed in ``unreadable`` and none of its rows are counted.
GX data docs (HTML) are written to ``docs_dir`` when given.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .conflicts import Resolution, Superseded, resolve
from .formats import FileFormatError, parse_file
from ..requests import LIST_FIELDS, TEXT_FIELDS, Problem, Quarantined, Request, Row

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    files: list[dict[str, Any]] = field(default_factory=list)  # {"file", "format", "rows"}
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {"file", "error"}
    accepted: list[Request] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    superseded: list[Superseded] = field(default_factory=list)
    docs: Path | None = None  # the GX data docs page of this validation
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(f["rows"] for f in self.files)

    def counts(self) -> dict[str, int]:
        return {"rows": self.rows, "accepted": len(self.accepted), "quarantined": len(self.quarantined),
                "superseded": len(self.superseded), "unreadable_files": len(self.unreadable)}

    def reasons(self) -> dict[str, int]:
        """How many quarantined rows failed each expectation (by the row's first problem)."""
        out: dict[str, int] = {}
        for q in self.quarantined:
            k = q.problems[0].expectation
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts(), "files": self.files, "unreadable": self.unreadable,
                "reasons": self.reasons(), "accepted": [r.to_json() for r in self.accepted],
                "quarantined": [q.to_json() for q in self.quarantined],
                "superseded": [s.to_json() for s in self.superseded],
                "docs": str(self.docs) if self.docs else None, "seconds": round(self.seconds, 3)}


def validate_files(paths: Iterable[str | Path], fmt: str | None = None, policy: str = "reject",
                   docs_dir: str | Path | None = None, *, keep_unknown_fields: bool = False) -> ValidationReport:
    """Validate one or more request files together (ids must be unique across them); a native record with an
    unknown field is quarantined unless ``keep_unknown_fields``."""
    t0 = time.perf_counter()
    report = ValidationReport()
    rows: list[Row] = []
    for p in paths:
        try:
            f, file_rows = parse_file(p, fmt, keep_unknown_fields=keep_unknown_fields)
        except FileFormatError as e:
            report.unreadable.append({"file": str(p), "error": str(e)})
            continue
        report.files.append({"file": str(p), "format": f, "rows": len(file_rows)})
        rows.extend(file_rows)

    parsed = [r for r in rows if not r.problems]
    for r in rows:
        if r.problems:
            report.quarantined.append(_quarantine(r, r.problems))
    # the same row twice (a file dropped twice, a line pasted twice): validate it once
    first_of: dict[str, Row] = {}
    copies: list[tuple[Row, Row]] = []
    unique: list[Row] = []
    for r in parsed:
        sig = json.dumps(r.fields, sort_keys=True, ensure_ascii=False, default=list)
        if sig in first_of:
            copies.append((r, first_of[sig]))
        else:
            first_of[sig] = r
            unique.append(r)

    problems = run_suite(unique, docs_dir)
    if docs_dir is not None:
        report.docs = _latest_page(Path(docs_dir))
    accepted: list[Request] = []
    for r in unique:
        if r.key in problems:
            report.quarantined.append(_quarantine(r, problems[r.key]))
        else:
            accepted.append(Request.from_row(r))
    by_key = {a.origin.file + "#" + str(a.origin.record): a for a in accepted}
    for copy, first in copies:
        if first.key in problems:
            report.quarantined.append(_quarantine(copy, problems[first.key]))
        else:
            kept = by_key[first.key]
            report.superseded.append(Superseded(Request.from_row(copy), kept.id, (
                f"the same request as {first.origin.where()} (identical fields)")))

    res: Resolution = resolve(accepted, policy)
    report.accepted = res.kept
    report.superseded.extend(res.superseded)
    report.quarantined.extend(res.conflicts)
    report.quarantined.sort(key=lambda q: (q.origin.file, q.origin.record))
    report.seconds = time.perf_counter() - t0
    return report


def read_requests(path: str | Path, policy: str = "reject") -> list[Request]:
    """Every request of one file, validated as ``factsmith validate`` does (any format); the first bad row is an
    error naming the file, line, request and field (exit 2 in the CLI). For the commands that take a file of
    requests to act on (``edit``, ``gate``): they act on all of it or on nothing."""
    rep = validate_files([path], policy=policy)
    if rep.unreadable:
        raise ValueError(rep.unreadable[0]["error"])
    if rep.quarantined:
        q = rep.quarantined[0]
        who = f"request {q.id!r}: " if q.id else ""
        raise ValueError(f"{q.origin.where()}: {who}field '{q.problems[0].field}': {q.reason} "
                         f"({len(rep.quarantined)} row(s) quarantined; run factsmith validate {path})")
    if not rep.accepted:
        raise ValueError(f"{path}: no requests in the file")
    return rep.accepted


def _quarantine(row: Row, problems: list[Problem]) -> Quarantined:
    rid = row.fields.get("id") if isinstance(row.fields.get("id"), str) else None
    return Quarantined(row.origin, row.raw, tuple(problems), id=rid)


def _frame(rows: list[Row]):
    import pandas as pd

    from .expectations import INDEX_COLUMN, PROBE_COLUMN

    data: dict[str, list[Any]] = {INDEX_COLUMN: [r.key for r in rows]}
    for name in TEXT_FIELDS:
        data[name] = [r.fields.get(name) for r in rows]
    # every probe string of the row, flattened: paraphrases, and the prompts and answers of the others
    data[PROBE_COLUMN] = [[s for name in LIST_FIELDS for item in r.fields.get(name) or ()
                           for s in ((item,) if isinstance(item, str) else item)] for r in rows]
    return pd.DataFrame(data, dtype=object)


def run_suite(rows: list[Row], docs_dir: str | Path | None = None) -> dict[str, list[Problem]]:
    """Row key -> its problems, in the suite's order (rows without problems are absent)."""
    if not rows:
        return {}
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from . import expectations as ex

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("factsmith").add_dataframe_asset("requests")
             .add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(ex.suite())
    order = {(e.expectation_type, getattr(e, "column", None) or getattr(e, "column_A", None)): i
             for i, e in enumerate(suite.expectations)}
    vd = context.validation_definitions.add(gx.ValidationDefinition(name="requests", data=batch, suite=suite))
    result = vd.run(batch_parameters={"dataframe": _frame(rows)},
                    result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ex.INDEX_COLUMN]})
    by_key = {r.key: r for r in rows}
    found: dict[str, list[tuple[int, Problem]]] = {}
    for r in result.results:
        cfg = r.expectation_config
        kwargs = dict(cfg.kwargs)
        column = kwargs.get("column") or kwargs.get("column_A")
        if not r.result and not r.success:  # a metric raised inside GX: never accept rows unchecked
            raise RuntimeError(f"Great Expectations could not evaluate {cfg.type} on {column!r}: "
                               f"{json.dumps(r.exception_info, default=str)[:500]}")
        for hit in r.result.get("unexpected_index_list") or []:
            row = by_key[hit[ex.INDEX_COLUMN]]
            value = row.fields.get(column) if column != ex.PROBE_COLUMN else [
                s for name in LIST_FIELDS for item in row.fields.get(name) or ()
                for s in ((item,) if isinstance(item, str) else item)]
            field_name = "probes" if column == ex.PROBE_COLUMN else column
            problem = Problem(field_name, cfg.type, ex.explain(cfg.type, column, value, kwargs))
            found.setdefault(row.key, []).append((order.get((cfg.type, column), len(order)), problem))
    if docs_dir is not None:
        _write_docs(context, Path(docs_dir))
    out: dict[str, list[Problem]] = {}
    for key, items in found.items():
        seen: set[tuple[str, str]] = set()
        for _, p in sorted(items, key=lambda t: t[0]):
            if (p.field, p.expectation) not in seen:  # be_unique lists a row once per duplicate
                seen.add((p.field, p.expectation))
                out.setdefault(key, []).append(p)
    return out


def _write_docs(context, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(site_name="factsmith", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })
    context.build_data_docs(site_names=["factsmith"])


def _latest_page(docs_dir: Path) -> Path | None:
    pages = sorted((docs_dir / "validations").rglob("*.html"), key=lambda p: p.stat().st_mtime)
    return pages[-1] if pages else None


def write_quarantine(entries: list[Quarantined], path: str | Path) -> Path:
    """Append quarantined rows to a JSONL file (one object a line, with the time they were quarantined)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with p.open("a", encoding="utf-8") as fh:
        for q in entries:
            fh.write(json.dumps({**q.to_json(), "quarantined_at": now}, ensure_ascii=False, default=str) + "\n")
    return p
