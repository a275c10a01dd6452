"""The fact-update pipeline as plain functions; :mod:`flows.flow` runs them as Prefect tasks.

One run over an inbox of request files (``*.jsonl``, ``*.json``, ``*.csv``, top level only)::

    ingest     validate every file together (Great Expectations); conflicting requests for one fact are
               resolved by ``policy`` (latest-wins: the latest ``requested_at`` is kept, the others superseded)
    dedupe     drop requests whose content the ledger already applied in the parent's lineage
    edit+gate  edit the parent version with the batch (MEMIT by default), gate the result against the parent
    prune      when the gate fails: the requests it names are rejected and the rest edited again (a few rounds);
    bisect     what still fails is bisected: the largest passing subset is kept, the rest rejected with the reason
    commit     register the version with every record of the run in one ledger append (or, with nothing to
               apply, append the records alone); the ledger append is the commit point
    follow-up  when the prune rounds left requests out of the batch while the rest passed (for the batch's
               budget, the norm growth, or for their own probes in that company), that version is registered
               with its own requests' records alone, and those requests are edited, gated and committed again on
               it (``follow_ups`` times at most; one that fails edited alone is rejected for good); the run's own
               record comes with the last commit, so a run killed between two is run again whole and skips what
               the earlier commit applied
    files      move each inbox file to ``processed/`` or, when any of its rows was quarantined or it could not
               be read, to ``quarantine/`` (with a ``.reasons.json`` beside it)

**Failure anywhere leaves nothing half done.** Nothing is written to the registry or the ledger before the
commit; a process killed during registration leaves a version the next change withdraws (see
:func:`registry.commit.withdraw_unrecorded`); the inbox files stay where they are until after the commit, and
a file whose content (SHA-256) a committed run already processed is only moved on the next run, never applied
twice. Requests applied before are skipped by content hash, so a file dropped twice applies nothing twice.

**One run per model at a time:** :func:`run_lock` is a file lock under ``FACTSMITH_HOME/locks``, released by the
operating system when its holder dies (kill -9 included). Across machines the registry's optimistic
concurrency refuses the second registration, and that run fails with its inbox intact for the next one.

The parent of an edit is the newest version whose gate passed; the new version is a ``candidate``
(``promote=True`` also makes it ``champion``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from editing.methods import DEFAULT as DEFAULT_METHOD
from registry.errors import RegistryError

from .attempt import Attempt, Selection, Workspace, edit_gate_bisect

log = logging.getLogger(__name__)

PATTERNS = ("*.jsonl", "*.json", "*.csv")
END_STATES = ("applied", "rejected", "quarantined", "superseded")


class PipelineError(RegistryError):
    """The run cannot go on (no registered model, a broken inbox directory); nothing was committed."""


@dataclass(frozen=True)
class RunOptions:
    name: str
    method: str = DEFAULT_METHOD
    policy: str = "latest-wins"  # requests with different targets for one fact: latest-wins | reject
    hparams_file: Path | None = None
    gate_policy_file: Path | None = None
    protected_file: Path | None = None
    promote: bool = False
    bisect: bool = True
    requested_by: str | None = None  # who started the run (recorded with the run)
    keep_unknown_fields: bool = False  # a native request's unknown fields: kept under ``extra``, else quarantined
    hooks_file: Path | None = None  # promotion hooks (None: FACTSMITH_HOME/hooks.yaml when present)
    # versions a run may register after its first for the requests the prune rounds left out of its batch (for
    # the batch's budget or their own probes in company): each edited again on the version just registered
    # (0: they stay rejected)
    follow_ups: int = 2


@dataclass
class InboxFile:
    path: Path
    sha256: str
    done_by: int | None = None  # the ledger seq of a committed run that already processed this content


@dataclass
class Intake:
    """What validation and deduplication left to edit, and what already has its end state."""

    files: list[InboxFile]
    todo: list[Any] = field(default_factory=list)  # validation.requests.Request
    quarantined: list[Any] = field(default_factory=list)  # validation.requests.Quarantined
    superseded: list[Any] = field(default_factory=list)  # validation.intake.conflicts.Superseded
    already: list[tuple[Any, dict]] = field(default_factory=list)  # (request, the ledger's applied record)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    docs: Path | None = None


@dataclass
class Outcome:
    """What a run did: the version registered (or None), each request's end state, and the reports."""

    version: int | None
    parent_version: int | None
    states: dict[str, list[dict[str, Any]]]
    already_applied: list[str]
    gate: Any = None  # validation.gate.metrics.GateReport of the registered batch
    report_html: Path | None = None
    moved: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bisect_runs: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)
    done_files: list[str] = field(default_factory=list)  # inbox files an earlier committed run processed
    versions: list[int] = field(default_factory=list)  # every version the run registered (``version`` is the last)

    def counts(self) -> dict[str, int]:
        return {s: len(self.states.get(s, [])) for s in END_STATES}

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "parent_version": self.parent_version, "counts": self.counts(),
                "already_applied": len(self.already_applied), "states": self.states,
                "gate": None if self.gate is None else self.gate.to_json(),
                "report_html": str(self.report_html) if self.report_html else None, "moved": self.moved,
                "bisect_runs": self.bisect_runs, "unreadable": self.unreadable, "done_files": self.done_files,
                "versions": self.versions, "timings": {k: round(v, 3) for k, v in self.timings.items()}}


# --------------------------------------------------------------------------------------------------
# inbox


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inbox_files(inbox: Path) -> list[Path]:
    """The request files at the top level of ``inbox`` (``processed/`` and ``quarantine/`` are below it)."""
    if not inbox.is_dir():
        raise PipelineError(f"{inbox}: inbox directory not found")
    out = {p for pat in PATTERNS for p in inbox.glob(pat) if p.is_file() and not p.name.startswith(".")}
    return sorted(out)


def run_lock(name: str, timeout: float = 0.0):
    """The lock that lets one run at a time edit ``name`` (a context manager; raises ``filelock.Timeout``)."""
    from filelock import FileLock
    from registry.refs import check_name
    from registry.store import home

    d = home() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d / f"run.{check_name(name)}.lock"), timeout=timeout)


def _processed_contents(name: str) -> dict[str, int]:
    """File SHA-256 -> ledger seq of the committed run that processed a file with that content."""
    from registry import ledger as L

    out: dict[str, int] = {}
    for r in L.read(name):
        if r.get("event") == "run":
            for f in r.get("files") or ():
                out.setdefault(f.get("sha256"), r.get("seq"))
    return out


def scan(inbox: Path, name: str) -> list[InboxFile]:
    done = _processed_contents(name)
    files = []
    for p in inbox_files(inbox):
        sha = file_sha256(p)
        files.append(InboxFile(p, sha, done.get(sha)))
    return files


# --------------------------------------------------------------------------------------------------
# ingest and dedupe


def applied_in(name: str, version: int, store) -> dict[str, dict[str, Any]]:
    """content hash -> the ``applied`` ledger record in effect in ``version`` (its lineage)."""
    from registry.lineage import facts_in, lineage

    chain = [i.version for i in lineage(name, version, store)]
    return {r["content_hash"]: r for r in facts_in(name, chain).values() if r.get("content_hash")}


def ingest(files: list[InboxFile], name: str, parent_version: int, policy: str, store,
           docs_dir: Path | None = None, keep_unknown_fields: bool = False) -> Intake:
    from validation.intake.validate import validate_files

    todo_files = [f for f in files if f.done_by is None]
    out = Intake(files=files)
    if not todo_files:
        return out
    report = validate_files([f.path for f in todo_files], policy=policy, docs_dir=docs_dir,
                            keep_unknown_fields=keep_unknown_fields)
    out.quarantined, out.superseded, out.unreadable, out.docs = (report.quarantined, report.superseded,
                                                                 report.unreadable, report.docs)
    applied = applied_in(name, parent_version, store)
    for r in report.accepted:
        rec = applied.get(r.content_hash)
        if rec is not None:
            out.already.append((r, rec))
        else:
            out.todo.append(r)
    return out


# --------------------------------------------------------------------------------------------------
# edit, gate, bisect


def parent_of(name: str, store) -> tuple[Any, int]:
    """(the newest version whose gate passed, the newest version): edits build on the first and must still
    find the second the newest when they register."""
    from registry.lineage import promotable
    from registry.versions import versions

    vs = versions(name, store)
    if not vs:
        raise PipelineError(f"model {name!r} has no versions (factsmith registry init --model DIR --name {name})")
    good = [v for v in vs if promotable(v)]
    return good[-1], vs[-1].version


def workspace(options: RunOptions, store, parent: Any, newest: int) -> Workspace:
    from editing import hparams as H
    from editing.modeldir import model_corpus
    from registry.lineage import checkout
    from validation.gate.policy import load_policy
    from validation.gate.probes import fluency_text, load_protected, model_facts

    from . import settings

    work = checkout(options.name, parent.version, store)
    model, tok, base_dir = work.model, work.tokenizer, work.base_dir
    hp, _ = H.resolve(options.method, options.hparams_file, base_dir, model)
    prot_path = options.protected_file or settings.protected_facts_file()
    policy_path = options.gate_policy_file or settings.gate_policy_file()  # the operator's standing policy
    protected = load_protected(prot_path) if prot_path.is_file() else []
    from registry import ledger as L

    subjects = sorted({r["subject"] for r in L.read(options.name) if isinstance(r.get("subject"), str)})
    return Workspace(parent, newest, model, tok, base_dir, hp, model_corpus(base_dir), load_policy(policy_path if policy_path.is_file() else None),
                     protected, model_facts(base_dir), fluency_text(base_dir), subjects,
                     state=method_state(options.name, options.method, work.state),
                     earlier=earlier_edits(options.name, work.chain), last_edits=last_edits(options.name, work.chain))


def earlier_edits(name: str, chain: list[Any]) -> list[Any]:
    """The requests in effect in the last version of ``chain`` (its lineage, base first), as the ledger
    recorded them: the gate's retention suite."""
    from registry.lineage import facts_in, ledger_request
    from validation.requests import Request

    recs = facts_in(name, [i.version for i in chain]).values()
    return [Request.from_json(ledger_request(r)) for r in recs if r.get("subject") and r.get("prompt") and r.get("new")]


def last_edits(name: str, chain: list[Any]) -> dict[str, Any]:
    """subject -> the last request applied to it in effect in the last version of ``chain`` (base first): the
    edit of that subject a stateful method's state holds, which a later edit of the subject replaces."""
    from registry.lineage import facts_in, ledger_request
    from validation.requests import Request

    order = {i.version: k for k, i in enumerate(chain)}
    recs = sorted(facts_in(name, list(order)).values(), key=lambda r: (order[r["version"]], r["seq"]))
    return {r["subject"]: Request.from_json(ledger_request(r)) for r in recs
            if r.get("subject") and r.get("prompt") and r.get("new")}


def method_state(name: str, method: str, found: Any) -> Any:
    """The state a stateful ``method`` continues from: the one in effect in the parent (``found``, a
    :class:`registry.lineage.MethodState`), or None to start afresh (none stored, or another method's)."""
    from editing.methods import get

    m = get(method)
    if not m.stateful:
        return None
    if found is None:
        return None
    if found.method != method:
        log.warning("%s: the method state in effect (version %d) is %s's, not %s's: starting %s's afresh",
                    name, found.version, found.method, method, method)
        return None
    if found.gaps:
        log.warning("%s: versions %s were edited by other methods since version %d stored the %s state: their keys "
                    "are not preserved", name, ", ".join(map(str, found.gaps)), found.version, method)
    return m.load_state(found.path)


# --------------------------------------------------------------------------------------------------
# commit and file moves


def _records(intake: Intake) -> list[dict[str, Any]]:
    """Ledger records for the rows that end this run without being applied: quarantined, superseded by a
    later request, or asking for what the ledger already applied under another id. The same request again
    (a file dropped twice) already has its record and gets none."""
    from registry import ledger as L

    recs = [L.quarantined_record(q) for q in intake.quarantined]
    for u in intake.unreadable:  # a file with no readable row: one record for the whole file
        recs.append({"event": "quarantined", "version": None, "request_id": None, "content_hash": None,
                     "subject": None, "relation": None, "prompt": None, "old": None, "new": None,
                     "requested_by": None, "source": None, "reason": None, "requested_at": None,
                     "state_reason": u["error"], "origin": {"file": u["file"], "line": None, "format": None}})
    for s in intake.superseded:
        recs.append(L.request_record("superseded", s.request, None, f"superseded by request {s.by}: {s.reason}"))
    for r, applied in intake.already:
        if applied.get("request_id") == r.id:
            continue
        recs.append(L.request_record("superseded", r, applied.get("version"),
                                     f"already applied in version {applied.get('version')} by request "
                                     f"{applied.get('request_id')} (same content)"))
    return recs


def run_record(intake: Intake, version: int | None, counts: dict[str, int], flow_run: str | None,
               requested_by: str | None) -> dict[str, Any]:
    from registry import ledger as L

    return L.model_record("run", version, files=[{"file": f.path.name, "sha256": f.sha256} for f in intake.files],
                          counts=counts, flow_run=flow_run, requested_by=requested_by)


def move_files(intake: Intake, inbox: Path) -> list[dict[str, str]]:
    """Move each processed file to ``processed/`` or ``quarantine/``; idempotent after a crash (a file already
    moved is simply gone from the inbox)."""
    bad_files = {str(Path(q.origin.file).resolve()) for q in intake.quarantined}
    bad_files |= {str(Path(u["file"]).resolve()) for u in intake.unreadable}
    reasons: dict[str, list[dict[str, Any]]] = {}
    for q in intake.quarantined:
        reasons.setdefault(str(Path(q.origin.file).resolve()), []).append(q.to_json())
    for u in intake.unreadable:
        reasons.setdefault(str(Path(u["file"]).resolve()), []).append({"error": u["error"]})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for f in intake.files:
        if not f.path.exists():
            continue
        key = str(f.path.resolve())
        where = "quarantine" if key in bad_files else "processed"
        dst_dir = inbox / where
        dst_dir.mkdir(exist_ok=True)
        dst = dst_dir / f"{stamp}-{f.path.name}"
        if key in reasons:
            tmp = dst.with_name(dst.name + ".reasons.json.tmp")
            tmp.write_text(json.dumps(reasons[key], ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
            tmp.replace(dst.with_name(dst.name + ".reasons.json"))
        shutil.move(str(f.path), dst)
        moved.append({"file": f.path.name, "to": str(dst), "where": where})
    return moved


def states_of(intake: Intake, applied: list[Any], rejected: dict[str, str], by_id: dict[str, Any],
              version: int | None) -> dict[str, list[dict[str, Any]]]:
    states: dict[str, list[dict[str, Any]]] = {s: [] for s in END_STATES}
    for r in applied:
        states["applied"].append({"id": r.id, "subject": r.subject, "prompt": r.text, "new": r.target_new,
                                  "version": version})
    for rid, why in rejected.items():
        r = by_id[rid]
        states["rejected"].append({"id": rid, "subject": r.subject, "new": r.target_new, "reason": why})
    for q in intake.quarantined:
        states["quarantined"].append({"id": q.id, "file": Path(q.origin.file).name, "line": q.origin.line,
                                      "reason": q.reason})
    for s in intake.superseded:
        states["superseded"].append({"id": s.request.id, "subject": s.request.subject, "by": s.by, "reason": s.reason})
    return states


def commit(options: RunOptions, ws: Workspace | None, intake: Intake, attempt: Attempt | None,
           rejected: dict[str, str], store, flow_run: str | None = None, final: bool = True,
           applied_before: list[tuple[Any, int]] = ()) -> tuple[int | None, Path | None, dict[str, list]]:
    """Register the attempt (or record the run alone) in one ledger append; returns (version, gate.html,
    states). Nothing before this writes to the registry or the ledger.

    ``final=False``: a version the run registers before a follow-up (see :func:`run`): only the attempt's own
    requests are recorded (applied), not the run, so the inbox files stay unprocessed until the final commit
    and a run killed in between is run again whole (what this version applied is then skipped as already
    applied). ``applied_before``: (request, version) pairs such commits of this run registered, for the
    states and counts of the final one."""
    import tempfile

    from registry import ledger as L
    from registry import versions as V
    from registry.lineage import artifacts_dir
    from validation.gate.report import write_reports

    by_id = {r.id: r for r in intake.todo}
    applied = attempt.requests if attempt is not None else []
    extra = _records(intake) if final else []
    version, html = None, None

    def states_at(v: int | None) -> dict[str, list[dict[str, Any]]]:
        states = states_of(intake, applied, rejected, by_id, v)
        states["applied"][:0] = [{"id": r.id, "subject": r.subject, "prompt": r.text, "new": r.target_new, "version": u}
                                 for r, u in applied_before]
        return states

    if attempt is not None:
        with tempfile.TemporaryDirectory(prefix="factsmith-run-") as tmp:
            attempt.report.meta = {"model": options.name, "parent_version": ws.parent.version, "flow_run": flow_run}
            write_reports(attempt.report, tmp)

            def run_rec(v: int) -> list[dict[str, Any]]:
                if not final:
                    return []
                return extra + [run_record(intake, v, {k: len(x) for k, x in states_at(v).items()}, flow_run,
                                           options.requested_by)]

            info = V.register(options.name, ws.parent.version, attempt.model, attempt.delta, requests=applied,
                              reports_dir=tmp, method=options.method,
                              rejected=[(by_id[i], why) for i, why in rejected.items()] if final else [],
                              expected_latest=ws.newest, extra_records=run_rec, state=attempt.state,
                              store=store)
        version = info.version
        states = states_at(version)
        html = artifacts_dir(store.client(), store, info) / "gate" / "gate.html"
    else:
        states = states_at(None)
        last = applied_before[-1][1] if applied_before else None  # the version this run registered last
        recs = [L.request_record("rejected", by_id[i], None, why) for i, why in rejected.items()]
        recs += extra + [run_record(intake, last, {k: len(x) for k, x in states.items()}, flow_run,
                                    options.requested_by)]
        V.record(options.name, recs, store=store)
    promoted = version if version is not None else (applied_before[-1][1] if applied_before else None)
    if final and options.promote and promoted is not None:
        from registry.hooks import load as load_hooks

        V.promote(options.name, promoted, requested_by=options.requested_by, store=store,
                  hooks=load_hooks(options.hooks_file))
    return version, html, states


# --------------------------------------------------------------------------------------------------
# one run


@dataclass(frozen=True)
class Tasks:
    """The steps :func:`run` calls: plain functions by default, Prefect tasks in :mod:`flows.flow`."""

    scan_inbox: Callable[..., list[InboxFile]]
    validate: Callable[..., Intake]
    edit_gate_bisect: Callable[..., Selection]
    commit: Callable[..., tuple[int | None, Path | None, dict[str, list]]]
    move_files: Callable[..., list[dict[str, str]]]


def _validate(files: list[InboxFile], options: RunOptions, parent_version: int, store) -> Intake:
    from . import settings

    return ingest(files, options.name, parent_version, options.policy, store,
                  docs_dir=settings.home() / "validation" / "docs", keep_unknown_fields=options.keep_unknown_fields)


def _edit_gate_bisect(ws: Workspace, requests: list[Any], bisect: bool) -> Selection:
    from . import settings

    return edit_gate_bisect(ws, requests, settings.cache_dir(), bisect=bisect)


PLAIN = Tasks(scan_inbox=scan, validate=_validate, edit_gate_bisect=_edit_gate_bisect, commit=commit,
              move_files=move_files)


def default_model(store) -> str:
    """The only registered model (a run must name one when there are several)."""
    from registry.store import default_name

    try:
        return default_name(store.client(), None, "--model")
    except ValueError as e:  # none registered (NotFoundError), or several
        raise PipelineError(str(e)) from None


def run(options: RunOptions, inbox: Path, store, flow_run: str | None = None, tasks: Tasks = PLAIN,
        lock_timeout: float = 0.0) -> Outcome:
    """One pipeline run over ``inbox`` for ``options.name``; see the module docstring."""
    from filelock import Timeout

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        lock = run_lock(options.name, timeout=lock_timeout)
        lock.acquire()
    except Timeout:
        raise PipelineError(f"model {options.name!r}: another run is editing it (lock {lock.lock_file}); "
                            f"try again when it ends") from None
    try:
        if options.promote:  # a malformed hooks file stops the run before it edits anything
            from registry.hooks import load as load_hooks

            load_hooks(options.hooks_file)
        t0 = time.perf_counter()
        files = tasks.scan_inbox(inbox, options.name)
        from registry.commit import reconcile

        reconcile(options.name, store)  # a version a killed run created but never committed is withdrawn first
        parent, newest = parent_of(options.name, store)
        intake = tasks.validate(files, options, parent.version, store)
        timings["validate"] = time.perf_counter() - t0
        ws, found = None, Selection(None, {}, 0, {})
        if intake.todo:
            t0 = time.perf_counter()
            ws = workspace(options, store, parent, newest)
            timings["load"] = time.perf_counter() - t0
            found = tasks.edit_gate_bisect(ws, intake.todo, options.bisect)
            timings.update(found.timings)
        version, html, versions, first_parent = None, None, [], parent.version
        shown, runs = None, 0  # the attempt whose gate report the outcome shows; edit + gate runs before the last
        states: dict[str, list[dict[str, Any]]] = {s: [] for s in END_STATES}
        if any(f.done_by is None for f in files):
            # follow-ups: what passed is registered, and the requests left out only for the batch's budget are
            # edited again on that version, while each round applies something
            rejected: dict[str, str] = {}
            applied_before: list[tuple[Any, int]] = []
            timings["commit"] = 0.0
            while found.attempt is not None and found.deferred and len(versions) < options.follow_ups:
                t0 = time.perf_counter()
                v, html, _ = tasks.commit(options, ws, intake, found.attempt, {}, store, flow_run, final=False)
                timings["commit"] += time.perf_counter() - t0
                versions.append(v)
                applied_before += [(r, v) for r in found.attempt.requests]
                rejected.update({i: why for i, why in found.rejected.items() if i not in found.deferred})
                shown, runs = found.attempt, runs + found.runs
                parent, newest = parent_of(options.name, store)  # the version just registered
                ws = workspace(options, store, parent, newest)
                found = tasks.edit_gate_bisect(ws, [r for r in intake.todo if r.id in found.deferred], options.bisect)
                for k, x in found.timings.items():
                    timings[k] = timings.get(k, 0.0) + x
            rejected.update({i: why if i not in found.deferred or "submit it again" in why else
                             why + " (not edited again without the others: the run has no follow-up left; submit it "
                                   "again)" for i, why in found.rejected.items()})
            t0 = time.perf_counter()
            version, html_final, states = tasks.commit(options, ws, intake, found.attempt, rejected, store, flow_run,
                                                       applied_before=applied_before)
            html = html_final or html
            timings["commit"] += time.perf_counter() - t0
            versions += [version] if version is not None else []
        t0 = time.perf_counter()
        moved = tasks.move_files(intake, inbox)
        timings["move"] = time.perf_counter() - t0
    finally:
        lock.release()
    timings["total"] = time.perf_counter() - t_all
    shown = found.attempt or shown
    return Outcome(version=versions[-1] if versions else None,
                   parent_version=first_parent if versions else None, states=states,
                   already_applied=[r.id for r, _ in intake.already],
                   gate=shown.report if shown is not None else None, report_html=html, moved=moved,
                   timings=timings, bisect_runs=runs + found.runs, unreadable=intake.unreadable,
                   done_files=[f.path.name for f in files if f.done_by is not None], versions=versions)
