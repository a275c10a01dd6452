"""The ledger: one append-only, hash-chained JSONL file per registered model.

``$FACTSMITH_HOME/registry/ledger/<name>.jsonl`` holds one record per request and state change
(``quarantined``, ``applied``, ``rejected``, ``superseded``, ``reverted``) and per model event (``base``,
``promoted``, ``rollback``). Each record carries ``seq`` (0, 1, ...), ``prev`` (the previous record's hash;
64 zeros for the first) and ``hash`` = SHA-256 of its own canonical JSON (sorted keys, no spaces, UTF-8)
without the ``hash`` field. Editing a record breaks its hash; removing or reordering records breaks the
``prev`` chain or the ``seq`` count.

Removing the *last* records leaves a valid chain, so the head (record count and last hash) is also kept
outside the file, twice: ``<name>.head.json`` beside it, rewritten at every append (catches a torn or
restored file), and the registered model's MLflow tag ``ledger_head`` = ``COUNT:HASH``, set by the registry
at every registration, promotion and rollback (it lives in another store, so truncating the ledger and
rewriting the head file together is still caught, back to the last registry event). :func:`verify` takes
that anchor as an argument so that this module needs no MLflow.

Appends hold a file lock (``<name>.jsonl.lock``); a record is one line written with one ``write`` and fsynced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import LedgerError
from .refs import check_name

log = logging.getLogger(__name__)

FORMAT = "factsmith.ledger/1"
GENESIS = "0" * 64
REQUEST_STATES = ("quarantined", "applied", "rejected", "superseded", "reverted")
# run: a pipeline run's commit (its inbox files); hook_failed: a promotion hook that failed every attempt
MODEL_EVENTS = ("base", "promoted", "rollback", "run", "hook_failed")


def ledger_dir() -> Path:
    from .store import registry_dir

    return registry_dir() / "ledger"


def ledger_path(name: str) -> Path:
    return ledger_dir() / f"{check_name(name)}.jsonl"


def head_path(name: str) -> Path:
    return ledger_dir() / f"{check_name(name)}.head.json"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Head:
    """How many records the ledger has and the hash of the last one."""

    count: int
    hash: str

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> "Head":
        try:
            count, h = text.split(":", 1)
            return cls(int(count), h)
        except ValueError:
            raise LedgerError(f"ledger head {text!r}: expected COUNT:SHA256") from None


def request_fields(request: Any) -> dict[str, Any]:
    """The ledger fields of a request: a :class:`validation.requests.Request`, an ``EditRequest`` or a
    native JSON dict (identity and provenance; ``old`` / ``new`` are target_true / target_new)."""
    from validation.requests import Request

    if isinstance(request, Mapping):
        r = dict(request)
        missing = [k for k in ("subject", "prompt", "target_new") if not isinstance(r.get(k), str)]
        if missing:
            raise LedgerError(f"request {r.get('id')!r}: expected string fields {missing} for the ledger, found "
                              f"{[type(r.get(k)).__name__ for k in missing]}")
        req = Request(id=str(r.get("id") or ""), subject=r["subject"], prompt=r["prompt"], target_new=r["target_new"],
                      target_true=r.get("target_true"), relation=r.get("relation"), source=r.get("source"),
                      requested_by=r.get("requested_by"), reason=r.get("reason"), requested_at=r.get("requested_at"))
    elif isinstance(request, Request):
        req = request
    else:  # editing.requests.EditRequest: what the engine needs, no provenance
        req = Request(id=request.id, subject=request.subject, prompt=request.prompt, target_new=request.target_new,
                      target_true=request.target_true)
    return {"request_id": req.id, "content_hash": req.content_hash, "subject": req.subject,
            "relation": req.relation, "prompt": req.prompt, "old": req.target_true, "new": req.target_new,
            "requested_by": req.requested_by, "source": req.source, "reason": req.reason,
            "requested_at": req.requested_at}


def quarantined_record(q: Any) -> dict[str, Any]:
    """A ``quarantined`` record for a :class:`validation.requests.Quarantined` row: whatever identity its raw
    record has (it failed validation, so any field may be missing or of the wrong type), its origin and reason."""
    raw = q.raw if isinstance(q.raw, Mapping) else {}
    text = lambda k: raw.get(k) if isinstance(raw.get(k), str) else None  # noqa: E731
    rec = {"event": "quarantined", "version": None, "request_id": q.id or text("id"), "content_hash": None,
           "subject": text("subject"), "relation": text("relation"), "prompt": text("prompt"), "old": text("target_true"),
           "new": text("target_new"), "requested_by": text("requested_by"), "source": text("source"),
           "reason": text("reason"), "requested_at": text("requested_at"), "state_reason": q.reason,
           "origin": {"file": q.origin.file, "line": q.origin.line, "format": q.origin.format}}
    if rec["subject"] is not None and rec["prompt"] is not None and rec["new"] is not None:
        from validation.requests import Request

        rec["content_hash"] = Request(id="", subject=rec["subject"], prompt=rec["prompt"], target_new=rec["new"],
                                      target_true=rec["old"]).content_hash
    return rec


def request_record(state: str, request: Any, version: int | None, reason: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    """A record for one request entering ``state`` (``reason`` overrides the request's own reason)."""
    if state not in REQUEST_STATES:
        raise LedgerError(f"state {state!r}: expected one of {', '.join(REQUEST_STATES)}")
    rec = {"event": state, "version": version, **request_fields(request)}
    if reason is not None:
        rec["state_reason"] = reason
    rec.update(extra)
    return rec


def model_record(event: str, version: int | None, **fields: Any) -> dict[str, Any]:
    if event not in MODEL_EVENTS:
        raise LedgerError(f"event {event!r}: expected one of {', '.join(MODEL_EVENTS)}")
    return {"event": event, "version": version, **fields}


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    from editing import jsonl

    if not path.exists():
        return []
    return list(jsonl.objects(path, jsonl.read_text(path, LedgerError, "the ledger"), LedgerError))


def read(name: str) -> list[dict[str, Any]]:
    """All records, oldest first (not verified: see :func:`verify`)."""
    return [r for _, r in _read_lines(ledger_path(name))]


def head(name: str) -> Head:
    """The head of the ledger as the file has it now (0 records: the genesis hash)."""
    recs = read(name)
    return Head(len(recs), recs[-1]["hash"] if recs else GENESIS)


def append(name: str, records: Iterable[Mapping[str, Any]], anchor: Head | None = None) -> Head:
    """Append records (each gets ``format``, ``model``, ``seq``, ``ts``, ``prev``, ``hash``) under the ledger's
    lock; returns the new head. The chain (and ``anchor``, see :func:`verify`) is checked first: nothing is
    appended to a broken ledger."""
    from filelock import FileLock

    path = ledger_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    with FileLock(str(path) + ".lock", timeout=300):
        check = verify(name, anchor)
        if not check.ok:
            raise LedgerError(f"{path}: refusing to append to a broken ledger: {check.problems[0]}")
        count, prev = check.head.count, check.head.hash
        lines = []
        for rec in records:
            full = {**rec, "format": FORMAT, "model": name, "seq": count, "ts": rec.get("ts") or now(), "prev": prev}
            full["hash"] = record_hash(full)
            lines.append(json.dumps(full, ensure_ascii=False, sort_keys=True) + "\n")
            count, prev = count + 1, full["hash"]
        if lines:
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
        new_head = Head(count, prev)
        tmp = head_path(name).with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"count": count, "hash": prev}) + "\n", encoding="utf-8")
        os.replace(tmp, head_path(name))
    return new_head


@dataclass(frozen=True)
class LedgerCheck:
    """The result of :func:`verify`: ``ok``, the head found, and one sentence per problem."""

    ok: bool
    records: int
    head: Head
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "head": str(self.head), "problems": list(self.problems)}


def verify(name: str, anchor: Head | None = None) -> LedgerCheck:
    """Check every record's hash, the ``prev`` chain and ``seq``; then the head file, and ``anchor`` (the
    head the registry recorded, from the registered model's ``ledger_head`` tag) as a prefix of the chain."""
    path = ledger_path(name)
    problems: list[str] = []
    try:
        lines = _read_lines(path)
    except LedgerError as e:
        return LedgerCheck(False, 0, Head(0, GENESIS), (str(e),))
    prev = GENESIS
    hashes = []
    for i, (n, rec) in enumerate(lines):
        where = f"{path.name}:{n}"
        stored = rec.get("hash")
        if stored != record_hash(rec):
            problems.append(f"{where}: record {rec.get('seq')} was edited (its hash does not match its content)")
        if rec.get("prev") != prev:
            problems.append(f"{where}: expected prev {prev[:12]}… (the hash of the record before it), found "
                            f"{str(rec.get('prev'))[:12]}…: a record was removed, inserted or reordered")
        if rec.get("seq") != i:
            problems.append(f"{where}: expected seq {i}, found {rec.get('seq')}: records were removed or reordered")
        if rec.get("model") != name:
            problems.append(f"{where}: expected model {name!r}, found {rec.get('model')!r}")
        prev = stored if isinstance(stored, str) else ""
        hashes.append(prev)
    found = Head(len(lines), hashes[-1] if hashes else GENESIS)
    hp = head_path(name)
    if hp.exists():
        try:
            h = json.loads(hp.read_text(encoding="utf-8"))
            file_head = Head(int(h["count"]), str(h["hash"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{hp.name}: unreadable head file: {e}")
        else:
            if file_head != found:
                problems.append(f"{hp.name}: expected the ledger to end at record {file_head.count} "
                                f"({file_head.hash[:12]}…), found {found.count} records ending {found.hash[:12]}…: "
                                f"records were removed from the end or the file was replaced")
    elif lines:
        problems.append(f"{hp.name}: missing (the ledger has {len(lines)} records)")
    if anchor is not None and anchor.count > 0:
        if anchor.count > len(hashes):
            problems.append(f"registry anchor: expected at least {anchor.count} records, found {len(hashes)}: "
                            f"records were removed from the end")
        elif hashes[anchor.count - 1] != anchor.hash:
            problems.append(f"registry anchor: expected record {anchor.count - 1} to hash {anchor.hash[:12]}…, "
                            f"found {hashes[anchor.count - 1][:12]}…")
    return LedgerCheck(not problems, len(lines), found, tuple(problems))
