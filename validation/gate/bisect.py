"""Bisect a batch that fails the gate: the largest subset that passes, and the requests that break it.

    result = bisect(requests, check)     # check(subset) -> GateReport (edit the base with subset, gate it)
    result.passed    # requests to register
    result.rejected  # {request id: reason}
    result.report    # the passing subset's gate report (None if nothing passes)

The search edits and gates halves recursively: a half that passes is kept whole; a half that fails is split
again, down to single requests. The passing parts of two halves are then joined: the larger is kept and the
other's requests are added back in halves, again recursively, as far as the union still passes; a request
that fails only in company is rejected as incompatible (the gate judges batches, and MEMIT's joint solve
can make two harmless edits harmful together). One request alone that fails is rejected with
the thresholds it failed. With k bad requests among n this costs O(k log n) gate runs (up to three per
level on the way down to each bad request: two halves and their union), not n.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from .metrics import GateReport
from ..requests import Request

log = logging.getLogger(__name__)

Check = Callable[[list[Request]], GateReport]


@dataclass
class BisectResult:
    passed: list[Request] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason
    report: GateReport | None = None  # of ``passed``
    runs: int = 0  # edit + gate runs made


def _reason(report: GateReport, request_id: str | None = None) -> str:
    parts = []
    for f in report.failures:
        if request_id is None or not f["requests"] or request_id in f["requests"]:
            parts.append(f"{f['metric']} {f['value']:.3f} against {f['threshold']:.3f}")
    return "gate failed: " + ("; ".join(parts) or "no threshold named")


def bisect(requests: list[Request], check: Check, first: GateReport | None = None) -> BisectResult:
    """The largest passing subset of ``requests`` (input order kept) under ``check``.

    ``first``: the report of the whole batch when the caller already has it (saves one run)."""
    out = BisectResult()
    reports: dict[tuple[str, ...], GateReport] = {}

    def run(sub: list[Request]) -> GateReport:
        key = tuple(r.id for r in sub)
        if key not in reports:
            if first is not None and len(sub) == len(requests) and not reports:
                reports[key] = first
            else:
                out.runs += 1
                reports[key] = check(sub)
                log.info("bisect: %d request(s) %s", len(sub), "pass" if reports[key].passed else "fail")
        return reports[key]

    def search(sub: list[Request]) -> list[Request]:
        rep = run(sub)
        if rep.passed:
            return sub
        if len(sub) == 1:
            out.rejected[sub[0].id] = _reason(rep, sub[0].id)
            return []
        mid = len(sub) // 2
        a, b = search(sub[:mid]), search(sub[mid:])
        if not a or not b:
            return a or b
        keep, other = (a, b) if len(a) >= len(b) else (b, a)
        return extend(keep, other)

    def extend(keep: list[Request], cands: list[Request]) -> list[Request]:
        """``keep`` (passing) plus as many of ``cands`` (each passing without ``keep``) as pass with it."""
        if not cands:
            return keep
        both = sorted(keep + cands, key=lambda r: order[r.id])
        rep = run(both)
        if rep.passed:
            return both
        if len(cands) == 1:
            out.rejected[cands[0].id] = (f"passes without the others but fails the gate together with "
                                         f"{len(keep)} other request(s) ({_reason(rep)})")
            return keep
        mid = len(cands) // 2
        return extend(extend(keep, cands[:mid]), cands[mid:])

    order = {r.id: i for i, r in enumerate(requests)}
    if not requests:
        return out
    out.passed = search(list(requests))
    out.report = run(out.passed) if out.passed else None
    return out
