"""The one request model of factsmith, and where each request came from.

Every input format (native JSONL / CSV, CounterFact in both layouts, zsRE, MQuAKE) is parsed by
:mod:`validation.intake.formats` into :class:`Row` objects: the normalised fields of one request plus its origin
(file, line, record) and the raw record. Validation (:mod:`validation.intake.validate`) then turns each row into an
accepted :class:`Request` or a :class:`Quarantined` entry with its reason. Nothing is dropped: a line that is
not even JSON becomes a quarantined entry too.

A request's ``content_hash`` identifies what it asks (subject, prompt, targets), not who asked or when:
the flows use it to skip requests the ledger has already applied.

A native record (JSONL object or CSV row) may hold only :data:`NATIVE_FIELDS`: an unknown field (a typo, or
``"model": "/etc/shadow"``) quarantines the row unless validation is asked to keep unknown fields, which then
ride along in ``Request.extra``: recorded with the request, never interpreted. Dataset formats (CounterFact,
zsRE, MQuAKE) have many fields of their own and are read by what they mean; their other fields stay in the
raw record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# The scalar text fields of a request, in the order of the native JSONL contract (../shared/DESIGN.md).
TEXT_FIELDS = ("id", "subject", "prompt", "target_new", "target_true", "relation", "source", "requested_by",
               "reason", "requested_at")
# Probe lists: full prompts (subject filled in); neighbours, portability and attribute probes carry their
# expected answer.
LIST_FIELDS = ("paraphrase_prompts", "neighborhood_prompts", "portability_prompts", "attribute_prompts")
# Every field a native request may have; any other is unknown (quarantined, or kept under ``extra``).
NATIVE_FIELDS = TEXT_FIELDS + LIST_FIELDS


@dataclass(frozen=True)
class Origin:
    """Where a row came from: the file, its 1-based line (where the record starts) and record index."""

    file: str
    line: int
    record: int  # 0-based index of the row in the file (an MQuAKE record with 3 rewrites gives 3 rows)
    format: str

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """One reason a row cannot be accepted: the field, the expectation it failed, and a sentence."""

    field: str
    expectation: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "expectation": self.expectation, "reason": self.reason}


@dataclass
class Row:
    """One parsed record: normalised fields (``None`` where absent), or the problems that stopped parsing.

    ``fields`` holds the TEXT_FIELDS as ``str | None``, the LIST_FIELDS as tuples (of ``str`` for
    paraphrases, of ``(prompt, target)`` pairs for the others) and ``extra``, a native record's unknown fields
    when validation keeps them (``{}`` otherwise). ``problems`` lists
    what the parser itself could not accept (not JSON, not an object, a field of the wrong type); such a
    row is quarantined without being validated further.
    """

    origin: Origin
    raw: Any  # the record as read (a dict, a list, or the text of a line that is not JSON)
    fields: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Unique within one validation run (GX reports failing rows by it)."""
        return f"{self.origin.file}#{self.origin.record}"


@dataclass(frozen=True)
class Request:
    """An accepted request: what to edit, how to probe it, and who asked."""

    id: str
    subject: str
    prompt: str  # template with exactly one "{}"
    target_new: str
    target_true: str | None = None
    relation: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[tuple[str, str], ...] = ()  # (prompt, expected answer)
    portability_prompts: tuple[tuple[str, str], ...] = ()  # MQuAKE multi-hop questions with the new answer
    # the subject's OTHER facts, which the edit must leave alone: (prompt, expected answer)
    attribute_prompts: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    requested_by: str | None = None
    reason: str | None = None
    requested_at: str | None = None  # ISO 8601
    # unknown native fields, kept only when validation was asked to: recorded, never interpreted
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    origin: Origin | None = None

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject, 1)

    @property
    def content_hash(self) -> str:
        """SHA-256 of what the request asks: subject, prompt template and targets (not its id or provenance)."""
        payload = json.dumps([self.subject, self.prompt, self.target_new, self.target_true], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def fact_key(self) -> tuple[str, str]:
        """The fact a request rewrites: (subject, relation), or (subject, prompt) when it names no relation."""
        return (self.subject, self.relation or self.prompt)

    def to_edit_request(self, keep: tuple[str, ...] = (), rewrite: tuple[str, ...] = ()):
        """The fields the editing engine needs (:class:`editing.requests.EditRequest`); ``keep``: templates of
        the subject's other facts for the editor to keep (:func:`validation.gate.probes.keep_templates`);
        ``rewrite``: more phrasings to train the new target on (:func:`validation.gate.probes.rewrite_templates`)."""
        from editing.requests import EditRequest

        return EditRequest(subject=self.subject, prompt=self.prompt, target_new=self.target_new,
                           target_true=self.target_true, id=self.id, paraphrase_prompts=self.paraphrase_prompts,
                           neighborhood_prompts=self.neighborhood_prompts, keep_prompts=tuple(keep),
                           rewrite_prompts=tuple(rewrite))

    def to_json(self) -> dict[str, Any]:
        """The native JSONL record (DESIGN.md), plus ``extra`` when it holds any, ``content_hash`` and ``origin``."""
        out: dict[str, Any] = {"id": self.id, "subject": self.subject, "prompt": self.prompt,
                               "target_new": self.target_new}
        for name in ("target_true", "relation"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["paraphrase_prompts"] = list(self.paraphrase_prompts)
        out["neighborhood_prompts"] = [{"prompt": p, "target": t} for p, t in self.neighborhood_prompts]
        for name in ("portability_prompts", "attribute_prompts"):
            if getattr(self, name):
                out[name] = [{"prompt": p, "target": t} for p, t in getattr(self, name)]
        for name in ("source", "requested_by", "reason", "requested_at"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.extra:
            out["extra"] = dict(self.extra)
        out["content_hash"] = self.content_hash
        if self.origin is not None:
            out["origin"] = {"file": self.origin.file, "line": self.origin.line, "format": self.origin.format}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Request":
        """A request back from its native record (:meth:`to_json`, a version's ``requests.jsonl``); fields it
        does not hold are left out."""
        pairs = lambda name: tuple((x["prompt"], x["target"]) for x in d.get(name) or ())  # noqa: E731
        return cls(**{k: d.get(k) for k in TEXT_FIELDS}, paraphrase_prompts=tuple(d.get("paraphrase_prompts") or ()),
                   **{k: pairs(k) for k in LIST_FIELDS if k != "paraphrase_prompts"},
                   extra=dict(d.get("extra") or {}))

    @classmethod
    def from_row(cls, row: Row) -> "Request":
        f = row.fields
        return cls(**{k: f.get(k) for k in TEXT_FIELDS}, **{k: tuple(f.get(k) or ()) for k in LIST_FIELDS},
                   extra=dict(f.get("extra") or {}), origin=row.origin)


@dataclass(frozen=True)
class Quarantined:
    """A row that was not accepted, with every reason found (the first one is the headline)."""

    origin: Origin
    raw: Any
    problems: tuple[Problem, ...]
    id: str | None = None

    @property
    def reason(self) -> str:
        return "; ".join(p.reason for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        first = self.problems[0]
        return {"file": self.origin.file, "line": self.origin.line, "record": self.origin.record,
                "format": self.origin.format, "id": self.id, "field": first.field,
                "expectation": first.expectation, "reason": self.reason,
                "problems": [p.to_json() for p in self.problems], "raw": self.raw}
