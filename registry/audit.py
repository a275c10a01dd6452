"""Audit: the history of each fact across versions, the facts two versions disagree on, ledger checks.

Everything here is read from the ledger (what was asked, by whom, what happened to it) and the
``parent_version`` tags (which versions' edits are in a version's weights): the facts in effect in version V
are the ``applied`` requests of V's lineage, the later one winning for the same fact (subject and relation,
or subject and prompt).
"""

from __future__ import annotations

from typing import Any

from . import ledger as L
from .refs import check_name
from .store import Store, aliases, open_store
from .lineage import fact_key, facts_in, lineage

HISTORY_FIELDS = ("seq", "ts", "event", "version", "request_id", "old", "new", "requested_by", "source", "reason",
                  "state_reason", "content_hash")


def history(name: str, subject: str | None = None) -> list[dict[str, Any]]:
    """One entry per fact (subject + relation or prompt), its records in ledger order; ``subject`` filters
    (case-insensitive, exact)."""
    check_name(name)
    facts: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in L.read(name):
        if rec.get("event") not in L.REQUEST_STATES:
            continue
        if subject is not None and (rec.get("subject") or "").casefold() != subject.casefold():
            continue
        key = fact_key(rec)
        entry = facts.setdefault(key, {"subject": rec.get("subject"), "relation": rec.get("relation"),
                                       "prompt": rec.get("prompt"), "events": []})
        entry["events"].append({k: rec.get(k) for k in HISTORY_FIELDS})
    return list(facts.values())


def events(name: str) -> list[dict[str, Any]]:
    """The model events (base, promoted, rollback, pipeline runs) in ledger order."""
    return [r for r in L.read(name) if r.get("event") in L.MODEL_EVENTS]


def _fact(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {"answer": rec.get("new"), "request_id": rec.get("request_id"), "version": rec.get("version"),
            "requested_by": rec.get("requested_by"), "source": rec.get("source"), "reason": rec.get("reason")}


def diff(name: str, va: int, vb: int, store: Store | None = None) -> dict[str, Any]:
    """The facts whose edited answer differs between versions ``va`` and ``vb``, with the requests behind
    each side (None on a side: that version has the base model's answer for it)."""
    st = store or open_store()
    la = [i.version for i in lineage(name, va, st)]
    lb = [i.version for i in lineage(name, vb, st)]
    fa, fb = facts_in(name, la), facts_in(name, lb)
    changed = []
    for key in sorted(set(fa) | set(fb)):
        a, b = fa.get(key), fb.get(key)
        if (a or {}).get("request_id") == (b or {}).get("request_id") and (a or {}).get("new") == (b or {}).get("new"):
            continue
        ref = b or a
        changed.append({"subject": ref.get("subject"), "relation": ref.get("relation"), "prompt": ref.get("prompt"),
                        "base_answer": ref.get("old"), "a": _fact(a), "b": _fact(b)})
    return {"name": name, "a": va, "b": vb, "lineage_a": la, "lineage_b": lb, "changed": changed}


def verify(name: str, store: Store | None = None) -> L.LedgerCheck:
    """:func:`registry.ledger.verify` with the registry's anchor (the ``ledger_head`` tag of the model)."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    aliases(c, name)  # NotFoundError for a model that is not registered
    tag = (c.get_registered_model(name).tags or {}).get("ledger_head")
    anchor = L.Head.parse(tag) if tag else None
    return L.verify(name, anchor)
