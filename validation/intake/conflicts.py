"""Requests in one batch that rewrite the same fact.

Two requests touch the same fact when they share the subject and the relation, or the subject and the
prompt template (MEMIT cannot take two different targets for one key, and "latest" is a policy choice, not
something to guess). Within such a group:

* requests that ask for the same new target (whatever they say the old one was) collapse into the first
  one; the others end ``superseded`` by it;
* requests that ask for different targets are a conflict: under the default policy ``reject`` every one of
  them is quarantined with a reason naming the others; under ``latest-wins`` the request with the latest
  ``requested_at`` (ties and missing times: the one later in the input) is kept and the rest are
  ``superseded`` by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..requests import Problem, Quarantined, Request

POLICIES = ("reject", "latest-wins")


@dataclass(frozen=True)
class Superseded:
    request: Request
    by: str  # id of the request kept instead
    reason: str

    def to_json(self) -> dict:
        out = self.request.to_json()
        out.update(superseded_by=self.by, reason_superseded=self.reason)
        return out


@dataclass
class Resolution:
    kept: list[Request] = field(default_factory=list)
    superseded: list[Superseded] = field(default_factory=list)
    conflicts: list[Quarantined] = field(default_factory=list)


def _groups(requests: list[Request]) -> list[list[int]]:
    """Indices grouped by shared (subject, relation) or (subject, prompt), in input order (union-find)."""
    parent = list(range(len(requests)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, r in enumerate(requests):
        keys = [("prompt", r.subject, r.prompt)]
        if r.relation:
            keys.append(("relation", r.subject, r.relation))
        for k in keys:
            if k in first:
                parent[find(i)] = find(first[k])
            else:
                first[k] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(requests)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _when(r: Request) -> datetime:
    """requested_at as an aware time (validated ISO 8601; a naive time is taken as UTC; missing: the epoch)."""
    if not r.requested_at:
        return datetime.min.replace(tzinfo=timezone.utc)
    t = datetime.fromisoformat(r.requested_at)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _fact(r: Request) -> str:
    return f"subject {r.subject!r}, " + (f"relation {r.relation!r}" if r.relation else f"prompt {r.prompt!r}")


def resolve(requests: list[Request], policy: str = "reject") -> Resolution:
    """Split accepted requests into kept, superseded and conflicting (quarantined) ones; input order kept."""
    if policy not in POLICIES:
        raise ValueError(f"unknown conflict policy {policy!r}: expected one of {', '.join(POLICIES)}")
    out = Resolution()
    kept_idx: set[int] = set()
    for group in _groups(requests):
        # requests for the same new target collapse into the first of them
        unique: dict[str, int] = {}
        for i in group:
            r = requests[i]
            target = r.target_new.strip().casefold()
            if target in unique:
                first = requests[unique[target]]
                out.superseded.append(Superseded(r, first.id, f"duplicate of request {first.id!r} (the same new "
                                                              f"target for the same fact)"))
            else:
                unique[target] = i
        distinct = sorted(unique.values())
        if len(distinct) == 1:
            kept_idx.add(distinct[0])
            continue
        if policy == "latest-wins":
            # a missing time sorts first, input order breaks ties
            win = max(distinct, key=lambda i: (_when(requests[i]), i))
            w = requests[win]
            kept_idx.add(win)
            for i in distinct:
                if i != win:
                    out.superseded.append(Superseded(requests[i], w.id, (
                        f"superseded by the later request {w.id!r} for the same fact ({_fact(w)}; policy latest-wins)")))
            continue
        ids = [requests[i].id for i in distinct]
        for i in distinct:
            r = requests[i]
            others = [repr(x) for x in ids if x != r.id]
            who = f"request {others[0]} asks" if len(others) == 1 else f"requests {', '.join(others)} ask"
            targets = ", ".join(repr(requests[j].target_new) for j in distinct)
            reason = (f"conflict: {who} a different target for the same fact ({_fact(r)}): {targets}; choose "
                      f"one, or use the policy latest-wins")
            out.conflicts.append(Quarantined(r.origin, r.to_json(), (Problem("target_new", "no_conflicting_requests",
                                                                              reason),), id=r.id))
    out.kept = [r for i, r in enumerate(requests) if i in kept_idx]
    return out
