"""``factsmith validate`` and ``gate``: requests through the intake's expectations, and an edited model
through the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .output import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_UNREADABLE, JsonOpt, emit_json, input_errors, stderr, stdout



KEEP_UNKNOWN_HELP = ("Keep a native request's unknown fields under 'extra' (recorded, never interpreted) instead of "
                     "quarantining the row (the default).")


@app.command()
def validate(
    files: list[Path] = typer.Argument(..., help="Request files (native JSONL/CSV, CounterFact, zsRE, MQuAKE)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the format: native, csv, counterfact, "
                                      "counterfact-flat, zsre, mquake (default: detected from each file)."),
    policy: str = typer.Option("reject", "--policy", help="Requests with different targets for one fact: "
                               "'reject' quarantines them all, 'latest-wins' keeps the latest requested_at."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine", help="Append quarantined rows to this JSONL "
                                              "(default FACTSMITH_HOME/quarantine/quarantine.jsonl)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Great Expectations data docs directory "
                                        "(default FACTSMITH_HOME/validation/docs)."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Do not write data docs."),
    keep_unknown_fields: bool = typer.Option(False, "--keep-unknown-fields", help=KEEP_UNKNOWN_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Validate request files with Great Expectations: accepted, quarantined (with reasons), superseded.

    Exit 0 when every row is valid, 2 when some rows were quarantined, 3 when a file cannot be read at all."""
    from flows import settings

    with input_errors(as_json):
        from validation.intake.conflicts import POLICIES
        from validation.intake.formats import FORMATS

        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
        if policy not in POLICIES:
            raise ValueError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
    from validation.intake.validate import validate_files, write_quarantine

    docs_dir = None if no_docs else (docs or settings.home() / "validation" / "docs")
    report = validate_files(files, fmt=fmt, policy=policy, docs_dir=docs_dir, keep_unknown_fields=keep_unknown_fields)
    qpath = None
    if report.quarantined:
        qpath = write_quarantine(report.quarantined, quarantine or settings.home() / "quarantine" / "quarantine.jsonl")
    code = EXIT_UNREADABLE if report.unreadable else (EXIT_BAD_INPUT if report.quarantined else 0)
    if as_json:
        emit_json({"ok": code == 0, **report.to_json(), "quarantine_file": str(qpath) if qpath else None,
                   "exit_code": code})
    else:
        _print_validation(report, qpath)
    raise typer.Exit(code)


def _print_validation(report, qpath: Optional[Path]) -> None:
    from rich.table import Table

    err = stderr()
    for u in report.unreadable:
        err.print(f"[bold red]error:[/] {u['error']}", highlight=False)
    c = report.counts()
    t = Table(title="Validation", title_justify="left")
    for col in ("file", "format", "rows"):
        t.add_column(col, justify="right" if col == "rows" else "left")
    for f in report.files:
        t.add_row(f["file"], f["format"], str(f["rows"]))
    out = stdout()
    if report.files:
        out.print(t)
    out.print(f"accepted {c['accepted']} · quarantined {c['quarantined']} · superseded {c['superseded']}"
              + (f" · unreadable files {c['unreadable_files']}" if c["unreadable_files"] else ""), highlight=False)
    if report.quarantined:
        q = Table(title="Quarantined", title_justify="left")
        for col in ("where", "id", "field", "reason"):
            q.add_column(col, overflow="fold")
        for row in report.quarantined[:50]:
            p = row.problems[0]
            q.add_row(row.origin.where(), row.id or "", p.field, row.reason)
        out.print(q)
        if len(report.quarantined) > 50:
            out.print(f"... and {len(report.quarantined) - 50} more", highlight=False)
        out.print(f"Quarantine records: {qpath}", highlight=False)
    for s in report.superseded[:20]:
        out.print(f"superseded: {s.request.id} — {s.reason}", highlight=False)
    if report.docs:
        out.print(f"Data docs: {report.docs}", highlight=False)



def protected_facts_file(given: Optional[Path]) -> Optional[Path]:
    """``--protected FILE``, else FACTSMITH_HOME/protected_facts.jsonl when the operator keeps one."""
    from flows import settings

    if given is not None:
        if not given.is_file():
            raise ValueError(f"{given}: protected facts file not found")
        return given
    default = settings.protected_facts_file()
    return default if default.is_file() else None


@app.command()
def gate(
    base: Path = typer.Option(..., "--base", help="The model before the edit (Hugging Face directory)."),
    edited: Path = typer.Option(..., "--edited", help="The edited model (Hugging Face directory)."),
    requests_file: Path = typer.Option(..., "--requests", help="The requests the edit applied (any request format)."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Gate thresholds (YAML; default: built-in)."),
    protected: Optional[Path] = typer.Option(None, "--protected", help="Protected facts JSONL (default "
                                             "FACTSMITH_HOME/protected_facts.jsonl when present)."),
    report: Path = typer.Option(..., "--report", help="Directory for gate.json, gate.md and gate.html."),
    as_json: bool = JsonOpt,
) -> None:
    """Gate an edited model against its base: reliability, generalization, locality, fluency, norms.

    Exit 0 when the gate passes, 1 when it fails, 2 on bad input."""
    with input_errors(as_json):
        from validation.gate.policy import load_policy
        from validation.gate.probes import fluency_text, load_protected, model_facts

        policy = load_policy(policy_file)
        prot_path = protected_facts_file(protected)
        prot = load_protected(prot_path) if prot_path else []
        from validation.intake.validate import read_requests

        reqs = read_requests(requests_file, policy="latest-wins")
        from editing.modeldir import load

        base_model, tok = load(base)
        edited_model, _ = load(edited)
    from validation.gate.metrics import run_gate
    from validation.gate.report import write_reports

    res = run_gate(base_model, edited_model, tok, reqs, policy, protected=prot, pool=model_facts(base),
                   text=fluency_text(base))
    res.meta = {"base": str(base), "edited": str(edited), "requests_file": str(requests_file),
                "policy_file": str(policy_file) if policy_file else None,
                "protected_file": str(prot_path) if prot_path else None}
    paths = write_reports(res, report)
    if as_json:
        emit_json({"ok": res.passed, **res.to_json(), "reports": {k: str(v) for k, v in paths.items()}})
    else:
        _print_gate(res, paths)
    raise typer.Exit(0 if res.passed else EXIT_FAILED)


def _print_gate(res, paths: dict) -> None:
    from rich.table import Table

    from validation.gate.report import fmt, summary_rows

    t = Table(title=f"Gate: {'PASSED' if res.passed else 'FAILED'} ({len(res.requests)} requests)",
              title_justify="left")
    for col in ("metric", "before", "after", "threshold", ""):
        t.add_column(col, justify="left" if col in ("metric", "") else "right")
    for r in summary_rows(res):
        style = "bold red" if r["status"] == "FAIL" else None
        t.add_row(r["label"], fmt(r["before"]), fmt(r["after"]), fmt(r["threshold"]), r["status"], style=style)
    out = stdout()
    out.print(t)
    for f in res.failures:
        who = ", ".join(f["requests"]) or "the batch as a whole"
        own = " (a request's own)" if f.get("scope") == "request" else ""
        out.print(f"failed: {f['metric']}{own} {fmt(f['value'])} against {fmt(f['threshold'])} — {who}",
                  highlight=False)
    out.print(f"Report: {paths['html']}", highlight=False)

