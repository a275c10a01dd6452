"""Revert one request: re-derive the newest version without it, gate the result, register it.

``rollback_to`` (the registry) restores old weights bit for bit, and with them drops every edit made since.
Reverting a single request keeps the others: the edits cannot be subtracted (each later edit was computed on
weights that contained the reverted one, and a MEMIT batch is one solve), so they are *recomputed*. Starting
from the parent P of the version V that applied the request, each edit version V..newest along the lineage is
recomputed with its own method and hyperparameters (from its stored delta) on its own requests minus the
reverted one, in order. The result is gated against P's weights on all the requests it still carries and
registered as a new ``kind=revert`` version whose ``parent_version`` is P (its patch and composed delta are
relative to P), with ``expected_latest`` = the newest version: a registration in between refuses it.
The ledger records the request as ``reverted`` and the re-derived requests as ``applied`` in the new version.

A stateful method's state (AlphaEdit's preserved keys) is recomputed the same way: from the state in effect
in P, through each recomputed edit; the new version stores the result.

The recomputed edits are not bit-identical to the originals (they start from other weights), which is why
the gate runs again; a version whose gate fails is registered but cannot be promoted.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from registry import ledger as L
from registry.errors import InvalidInputError, NotFoundError
from registry.lineage import VersionInfo, checkout, lineage, newest_version, recorded_edits
from registry.refs import check_name
from registry.store import Store, open_store
from registry.versions import register, rollback_to

from . import settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RevertResult:
    """The new version, the gate report of the re-derived model (None when nothing was left to edit)."""

    version: VersionInfo
    gate: Any  # validation.gate.metrics.GateReport | None
    recomputed: tuple[int, ...]  # the versions whose edits were recomputed


def revert_request(name: str, request_id: str, *, policy: Any = None, protected: Sequence[Any] | None = None,
                   corpus_files: Sequence[Path] | None = None, cache_dir: Path | None = None,
                   reason: str | None = None, requested_by: str | None = None,
                   store: Store | None = None, hooks: Any = None) -> RevertResult:
    """Register a new version: the newest version re-derived without request ``request_id``, gated again.

    ``policy`` is a :class:`validation.gate.policy.GatePolicy` (default thresholds when None); ``protected`` the
    protected facts (default: ``$FACTSMITH_HOME/protected_facts.jsonl`` when it exists); ``corpus_files`` the
    covariance corpus (default: the base model's ``stats_corpus.txt`` when it ships one);
    ``cache_dir`` the editing cache (default ``$FACTSMITH_HOME/cache``)."""
    from editing.delta import apply, weights_sha256
    from editing.engine import compute_edit
    from editing import methods
    from editing.hparams import from_dict
    from editing.modeldir import model_corpus
    from editing.store import Cache
    from validation.gate.metrics import run_gate
    from validation.gate.probes import fluency_text, load_protected, model_facts, rewrite_templates
    from validation.gate.report import write_reports
    from validation.requests import Request

    check_name(name)
    st = store or open_store()
    newest = newest_version(st.client(), name)
    chain = lineage(name, newest, st)
    in_chain = {i.version for i in chain}
    hits = [r for r in L.read(name) if r.get("event") == "applied" and r.get("request_id") == request_id
            and r.get("version") in in_chain and not r.get("via_rollback")]
    if not hits:
        raise NotFoundError(f"model {name!r}: request {request_id!r} is not applied in the newest version {newest} "
                            f"(lineage {' -> '.join(str(i.version) for i in chain)}); see factsmith audit")
    v = hits[-1]["version"]
    idx = next(i for i, info in enumerate(chain) if info.version == v)
    parent = chain[idx - 1]

    steps = []  # the edits from V on, each without the reverted request (an edit left empty drops out)
    for e in recorded_edits(chain[idx:], st):
        left = [r for r in e.requests if r.get("id") != request_id]
        if not left:
            continue
        if e.method is None or e.hparams is None:
            raise InvalidInputError(f"model {name!r} version {e.version}: its delta does not record the method "
                                    f"and hparams, so its edit cannot be recomputed")
        steps.append((e.version, e.method, e.hparams, left))
    why = f"revert request {request_id}" + (f": {reason}" if reason else "")
    if not steps:  # nothing else to keep: the parent's weights are the answer, exactly
        info = rollback_to(name, parent.version, reason=why, requested_by=requested_by, store=st, hooks=hooks)
        return RevertResult(info, None, ())

    work = checkout(name, parent.version, st)
    model, tok = work.model, work.tokenizer
    base = copy.deepcopy(model)
    if corpus_files is None:
        corpus_files = model_corpus(work.base_dir)
    edit_store = Cache(cache_dir if cache_dir is not None else settings.cache_dir())
    # a stateful method's state is recomputed along: from the parent's, through each recomputed edit
    states: dict[str, Any] = {}
    if work.state is not None and work.state.method in methods.METHODS and methods.get(work.state.method).stateful:
        states[work.state.method] = methods.get(work.state.method).load_state(work.state.path)
    last_stateful = None
    from .pipeline import last_edits

    last = last_edits(name, work.chain)
    pool = model_facts(work.base_dir)
    deltas, kept = [], []
    for version, method, hp_dict, left in steps:
        reqs = [Request.from_json(r) for r in left]
        # as the version computed them: the keep and rewrite prompts it recorded (none in an older version)
        edit_reqs = [q.to_edit_request(keep=tuple(r.get("keep_prompts") or ()), rewrite=tuple(r.get("rewrite_prompts") or ()))
                     for q, r in zip(reqs, left)]
        replaced = [last[q.subject].to_edit_request(rewrite=rewrite_templates(last[q.subject], pool=pool))
                    for q in reqs if q.subject in last]  # the edits it replaces (pipeline.last_edits)
        result = compute_edit(model, tok, edit_reqs, from_dict(method, hp_dict),
                              edit_store, corpus_files=list(corpus_files) if corpus_files else None,
                              state=states.get(method), released=replaced)
        apply(model, result.delta)
        last.update((q.subject, q) for q in reqs)
        if result.state is not None:
            states[method], last_stateful = result.state, method
        deltas.append((result.delta, method, hp_dict, left))
        kept += reqs
        log.info("%s: recomputed version %d's edit without %s (%d request(s))", name, version, request_id, len(reqs))

    if protected is None:
        default = settings.protected_facts_file()
        protected = load_protected(default) if default.is_file() else []
    from .pipeline import earlier_edits

    # the retention suite: the edits P already holds must survive the recomputed ones
    report = run_gate(base, model, tok, kept, policy, protected=list(protected), pool=model_facts(work.base_dir),
                      text=fluency_text(work.base_dir), earlier=earlier_edits(name, work.chain))
    report.meta = {"reverts": request_id, "parent_version": parent.version, "newest": newest}
    composed = deltas[0][0]
    for d, *_ in deltas[1:]:
        composed = composed.compose(d)
    composed.meta = {"method": "+".join(dict.fromkeys(m for _, m, _, _ in deltas)), "reverts": request_id,
                     "base_weights_sha256": parent.weights_sha256,
                     "steps": [{"method": m, "hparams": h, "requests": left} for _, m, h, left in deltas],
                     "requests": [r for *_, left in deltas for r in left]}
    with tempfile.TemporaryDirectory(prefix="factsmith-revert-") as tmp:
        write_reports(report, tmp)
        info = register(name, parent.version, model, composed, requests=[r for *_, left in deltas for r in left],
                        reports_dir=tmp, method=composed.meta["method"],
                        hparams={"steps": [h for _, _, h, _ in deltas]}, expected_latest=newest,
                        reverts=(request_id,), kind="revert",
                        state=states.get(last_stateful) if last_stateful else None, state_method=last_stateful,
                        extra_tags={"reverts": request_id, "reverted_from": str(newest),
                                    "recomputed_versions": ",".join(str(s[0]) for s in steps)},
                        store=st)
    assert weights_sha256(model) == info.weights_sha256
    return RevertResult(info, report, tuple(dict.fromkeys(s[0] for s in steps)))
