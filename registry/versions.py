"""Changing the registry: ``init`` a base model, ``register`` an edit, ``promote``, ``rollback_to``, ``record``.

Storage (see :mod:`registry.weights`): version 1 (``kind=base``) stores the whole Hugging Face directory under
the run's ``model/`` artifact folder. Every later ``kind=edit`` version stores

* ``patch/weights.safetensors`` -- the full new values of only the tensors the edit changed;
* ``delta/delta.safetensors`` -- the edit's low-rank factors (audit, re-derivation; not needed to load);
* ``gate/gate.json|md|html``, ``edit.json``, ``requests.jsonl``;
* ``state/state.safetensors`` -- a stateful method's state after the edit (AlphaEdit: Σ k kᵀ of every edited
  key, per layer), tagged ``state_sha256`` and ``state_method``; checked out with the weights and verified
  like them (:func:`registry.lineage.state_of`).

A ``kind=rollback`` version stores no weights at all: its ``parent_version`` is the version whose weights it
restores. Loading (:mod:`registry.lineage`, re-exported here: ``load_model``, ``resolve``) walks
``parent_version`` down to the base and copies the patches back up, then checks the result against the
version's ``weights_sha256`` tag. A version costs the size of the matrices its edit touched (one MLP matrix per edited layer), not
of the model. Measured on the demo sandbox (4 x 256 GPT-2, 14.6 MB on disk, one 1024 x 256 float32 matrix per
edit; 2 busy cores): ``init`` 4.6 s and 14.6 MB; each edit version 0.3-0.8 s and 1.06 MB (patch 1.05 MB, delta
and reports a few kB); ten edit versions 25 MB in all against 161 MB as whole weights; loading version 11
(base + 10 patches, hashed) 0.13 s; a rollback version 67 bytes.

Tags on each model version: ``kind``, ``parent_version``, ``storage``, ``weights_sha256``,
``base_weights_sha256``, ``method``, ``hparams_sha256``, ``requests_sha256``, ``n_requests``,
``factsmith_version``, ``git_commit``, ``gate_passed`` and ``gate.<metric>``; gate metrics are also logged on
the version's MLflow run (experiment ``factsmith/<name>``). New versions get alias ``candidate``;
:func:`promote` moves ``champion`` and refuses a version whose gate failed.

Optimistic concurrency: a registration names the version it expects to be the newest (its parent, by
default). Under the model's file lock it checks that, creates the version, then checks again that no other
version appeared between the expected one and its own (the guard that still holds on a remote server, where
the file lock does not reach: see :mod:`registry.store`). Either check failing is a
:class:`~registry.errors.ConcurrencyError` and leaves no version behind.

A version whose gate failed can be registered (for inspection; its requests are ``applied`` in the ledger,
meaning "in this version's weights") but never promoted.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import ledger as L
from .errors import ConcurrencyError, InvalidInputError, PromotionError, RegistryError
from .lineage import (VersionInfo, facts_in, fact_key, info_of, ledger_request, lineage, load_model,  # noqa: F401
                      newest_version, promotable, rebuild, resolve)
from .commit import (append_records, check_ledger, create_checked, finishing, provenance, sha256_json,
                     start_run, withdraw_unrecorded)
from . import hooks as H
from .pyfunc import stage_pyfunc
from .refs import check_name
from .store import Store, aliases, all_versions, get_version, open_store

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
MAIN_METRICS = ("reliability", "generalization", "locality", "protected", "retention", "kl", "perplexity_ratio",
                "entropy_drop", "max_norm_growth")


# --------------------------------------------------------------------------------------------------
# init


def init(model_dir: str | Path, name: str, store: Store | None = None) -> tuple[VersionInfo, bool]:
    """Register a Hugging Face directory as version 1 of ``name`` with alias ``champion``.

    Idempotent: the same weights again return the existing version 1 (``created`` False). Other weights
    under an existing name are refused: an edited model is registered with :func:`register`."""
    from editing.delta import weights_sha256
    from mlflow.exceptions import MlflowException

    from .weights import check_model_dir, load_hf, stage_model_dir

    check_name(name)
    d = Path(model_dir)
    check_model_dir(d)
    model, _ = load_hf(d)
    sha = weights_sha256(model)
    del model
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        withdraw_unrecorded(c, st, name)  # an init that died before recording version 1 left it behind
        existing = all_versions(c, name)
        if existing:
            first = existing[0]
            have = (first.tags or {}).get("weights_sha256")
            if have == sha:
                amap = aliases(c, name)
                if CHAMPION not in amap:
                    c.set_registered_model_alias(name, CHAMPION, str(first.version))
                    amap[CHAMPION] = int(first.version)
                return info_of(first, amap), False
            raise RegistryError(
                f"model {name!r} is already registered with base weights {have}; {d} has weights {sha}: "
                f"register edits of it with 'register', or choose another name")
        try:
            c.create_registered_model(name, tags={"factsmith": "1", "base_weights_sha256": sha},
                                      description=f"factsmith model; base from {d.resolve()}")
        except MlflowException as e:
            if getattr(e, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
        check_ledger(c, st, name)
        prov = provenance()
        run = start_run(c, st, name, f"{name} v1 (base)", {"factsmith.kind": "base", **prov})
        with finishing(c, run), tempfile.TemporaryDirectory(prefix="factsmith-init-") as tmp:
            stage_model_dir(d, Path(tmp) / "model")
            stage_pyfunc(Path(tmp), name, sha)
            c.log_artifacts(run.info.run_id, tmp)
            tags = {"kind": "base", "storage": "full", "weights_sha256": sha, "base_weights_sha256": sha,
                    "gate_passed": "n/a", "n_requests": "0", "source_dir": str(d.resolve()), **prov}
            mv = create_checked(c, st, name, 0, run, tags, run.info.artifact_uri, "init")
            c.set_registered_model_alias(name, CHAMPION, str(mv.version))
            append_records(c, name, [L.model_record("base", int(mv.version), weights_sha256=sha,
                                             source_dir=str(d.resolve()))])
        return info_of(c.get_model_version(name, str(mv.version)), aliases(c, name)), True


# --------------------------------------------------------------------------------------------------
# register


def _gate_from_reports(reports_dir: Path | None) -> dict[str, Any] | None:
    if reports_dir is None:
        return None
    p = Path(reports_dir) / "gate.json"
    if not p.is_file():
        raise InvalidInputError(f"{reports_dir}: expected gate.json (factsmith gate --report DIR), found none")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{p}: cannot read the gate report: {e}") from None


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    import math

    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _request_json(r: Any) -> dict[str, Any]:
    if isinstance(r, Mapping):
        return dict(r)
    return r.to_json()


def register(name: str, parent_version: int, model: Any, delta: Any = None, *,
             requests: Sequence[Any] | None = None, gate_passed: bool | None = None,
             metrics: Mapping[str, Any] | None = None, reports_dir: str | Path | None = None,
             edit_json: str | Path | Mapping[str, Any] | None = None, method: str | None = None,
             hparams: Mapping[str, Any] | None = None, rejected: Iterable[tuple[Any, str]] = (),
             expected_latest: int | None = None, reverts: Sequence[str] = (), kind: str = "edit",
             extra_tags: Mapping[str, str] | None = None,
             extra_records: Sequence[Mapping[str, Any]] | Callable[[int], Sequence[Mapping[str, Any]]] = (),
             state: Any = None, state_method: str | None = None, store: Store | None = None) -> VersionInfo:
    """Register an edited model as a new version of ``name`` derived from ``parent_version``.

    ``model`` is the edited model (an ``nn.Module``) or its directory; ``delta`` a :class:`editing.delta.Delta`
    or its file (default: ``delta.safetensors`` in the model directory). ``requests`` default to the delta's
    (or edit.json's); ``gate_passed`` and ``metrics`` to ``reports_dir/gate.json``. ``rejected`` are
    (request, reason) pairs the gate or bisection left out (ledger state ``rejected``). The registration is
    refused with :class:`ConcurrencyError` when ``expected_latest`` (default ``parent_version``) is no longer
    the newest version. ``reverts`` names requests in effect in ``expected_latest`` that this version leaves
    out (ledger state ``reverted``; see :mod:`flows.revert`). ``extra_records`` (or a function of the new
    version number that returns them) go into the same ledger append, the registration's commit point: a
    pipeline run records its quarantined and superseded rows and the run itself together with the version.
    ``state`` is the method state after the edit (an object with ``save(path)`` writing safetensors, or such a
    file), stored with the version; ``state_method`` (default ``method``) the method it belongs to.

    Four stages: the inputs normalised (:func:`_submission`), checked against the parent's weights
    (:func:`_changes_from`), staged as the run's artifacts (:func:`_stage`), committed (:func:`_commit`).
    """
    check_name(name)
    if kind not in ("edit", "revert"):
        raise InvalidInputError(f"register: kind {kind!r}: expected 'edit' or 'revert'")
    t0 = time.perf_counter()
    st = store or open_store()
    c = st.client()
    parent = info_of(get_version(c, name, parent_version), aliases(c, name))
    expected = parent_version if expected_latest is None else expected_latest
    with st.lock(name):
        check_ledger(c, st, name)
    newest = newest_version(c, name)
    if newest != expected:  # fail before the expensive part; checked again under the lock
        raise ConcurrencyError(f"model {name!r}: register from version {parent_version} expected version {expected} "
                               f"to be the newest, found version {newest}: rebase onto version {newest}")
    sub = _submission(model, delta, requests, gate_passed, metrics, reports_dir, edit_json, method, hparams)
    changed, sha = _changes_from(name, parent, sub, st)
    content_hashes = [L.request_fields(r)["content_hash"] for r in sub.requests]
    tags = {"kind": kind, "storage": "patch", "parent_version": str(parent_version), "weights_sha256": sha,
            "base_weights_sha256": parent.tags.get("base_weights_sha256", ""), "method": sub.method or "",
            "n_requests": str(len(sub.requests)),
            "hparams_sha256": sha256_json(sub.hparams) if sub.hparams is not None else "",
            "requests_sha256": sha256_json(content_hashes), "gate_passed": "true" if sub.gate_passed else "false",
            "changed_tensors": ",".join(sorted(changed))[:4000], **provenance()}
    tags.update({f"gate.{k}": f"{sub.metrics[k]:.6g}" for k in MAIN_METRICS if k in sub.metrics})
    tags.update(extra_tags or {})
    run = _stage(c, st, name, parent_version, sub, changed, sha, tags, state, state_method or sub.method or "")
    with finishing(c, run), st.lock(name):
        v = _commit(c, st, name, parent_version, expected, run, tags, sub, rejected, reverts, extra_records)
    log.info("%s: registered version %d from %d in %.2f s", name, v, parent_version, time.perf_counter() - t0)
    return info_of(c.get_model_version(name, str(v)), aliases(c, name))


@dataclass
class _Submission:
    """What a registration records, normalised from its arguments, the model directory and the reports."""

    model: Any  # the edited nn.Module
    delta: Any  # editing.delta.Delta
    edit_record: dict[str, Any] | None
    requests: list[Any]
    method: str | None
    hparams: Mapping[str, Any] | None
    gate_passed: bool
    metrics: dict[str, float]  # finite numbers only
    reports_dir: Path | None


def _submission(model: Any, delta: Any, requests: Sequence[Any] | None, gate_passed: bool | None,
                metrics: Mapping[str, Any] | None, reports_dir: str | Path | None,
                edit_json: str | Path | Mapping[str, Any] | None, method: str | None,
                hparams: Mapping[str, Any] | None) -> _Submission:
    from editing.delta import Delta
    from editing.modeldir import DELTA, EDIT_RECORD

    from .weights import load_hf

    model_dir = None
    if isinstance(model, (str, Path)):
        model_dir = Path(model)
        model, _ = load_hf(model_dir)
    if delta is None:
        if model_dir is None or not (model_dir / DELTA).is_file():
            raise InvalidInputError("register: expected a delta (or a model directory with delta.safetensors), found none")
        delta = model_dir / DELTA
    if not isinstance(delta, Delta):
        delta = Delta.load(delta)
    if edit_json is None and model_dir is not None and (model_dir / EDIT_RECORD).is_file():
        edit_json = model_dir / EDIT_RECORD
    edit_record: dict[str, Any] | None = None
    if isinstance(edit_json, (str, Path)):
        try:
            edit_record = json.loads(Path(edit_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"{edit_json}: cannot read edit.json: {e}") from None
    elif edit_json is not None:
        edit_record = dict(edit_json)
    if requests is None:
        requests = delta.meta.get("requests") or (edit_record or {}).get("requests")
        if not requests:
            raise InvalidInputError("register: expected the requests (argument, delta metadata or edit.json), found none")
    method = method or delta.meta.get("method") or (edit_record or {}).get("method")
    hparams = hparams if hparams is not None else (delta.meta.get("hparams") or (edit_record or {}).get("hparams"))

    gate = _gate_from_reports(Path(reports_dir) if reports_dir is not None else None)
    if gate is not None:
        if gate_passed is not None and bool(gate.get("passed")) != gate_passed:
            raise InvalidInputError(f"register: gate_passed={gate_passed} but {reports_dir}/gate.json says "
                                    f"passed={gate.get('passed')}")
        gate_passed = bool(gate.get("passed"))
        if metrics is None:
            metrics = {**(gate.get("metrics") or {}),
                       **{k: gate[k] for k in ("reliability", "generalization", "locality") if k in gate}}
    if gate_passed is None:
        raise InvalidInputError("register: expected gate_passed (or a reports_dir with gate.json), found neither")
    return _Submission(model, delta, edit_record, list(requests), method, hparams, gate_passed,
                       _numbers(metrics or {}), Path(reports_dir) if reports_dir is not None else None)


def _changes_from(name: str, parent: VersionInfo, sub: _Submission, st: Store) -> tuple[dict[str, Any], str]:
    """(the tensors the edit changed, the edited weights' SHA-256): the edit must have been computed on exactly
    the parent's weights (rebuilt and verified) and change only the delta's matrices."""
    from editing.delta import weights_sha256

    from .weights import changed_tensors

    parent_model, _, _ = rebuild(name, parent.version, st)
    on = sub.delta.meta.get("base_weights_sha256")
    if on and on != parent.weights_sha256:
        raise InvalidInputError(f"register: the delta was computed on weights {on}, but version {parent.version} "
                                f"of {name!r} has weights {parent.weights_sha256}")
    changed = changed_tensors(parent_model, sub.model)
    allowed = {f"{n}.weight" for n in sub.delta.layers}
    outside = sorted(set(changed) - allowed)
    if outside:
        raise InvalidInputError(f"register: expected the edited model to differ from version {parent.version} only "
                                f"in the delta's matrices {sorted(allowed)}, found changes in {outside[:5]}")
    if not changed:
        log.warning("%s: the edited model equals version %d (the delta changed no weight)", name, parent.version)
    return changed, weights_sha256(sub.model)


def _stage(c, st: Store, name: str, parent_version: int, sub: _Submission, changed: dict[str, Any], sha: str,
           tags: dict[str, str], state: Any = None, state_method: str = ""):
    """Write the version's artifacts (patch, delta, reports, edit record, requests, method state) into a new
    MLflow run; the state's hash and method go into ``tags``."""
    from mlflow.entities import Metric, Param

    from editing.modeldir import DELTA, EDIT_RECORD

    from .weights import save_patch

    with tempfile.TemporaryDirectory(prefix="factsmith-register-") as tmp:
        stage = Path(tmp)
        (stage / "patch").mkdir()
        save_patch(changed, stage / "patch" / "weights.safetensors",
                   {"model": name, "parent_version": str(parent_version), "weights_sha256": sha})
        (stage / "delta").mkdir()
        sub.delta.save(stage / "delta" / DELTA)
        if sub.reports_dir is not None:
            (stage / "gate").mkdir()
            for f in ("gate.json", "gate.md", "gate.html"):
                if (sub.reports_dir / f).is_file():
                    shutil.copy2(sub.reports_dir / f, stage / "gate" / f)
        if sub.edit_record is not None:
            (stage / EDIT_RECORD).write_text(json.dumps(sub.edit_record, ensure_ascii=False, indent=2, default=str)
                                             + "\n", encoding="utf-8")
        if state is not None:
            from .lineage import STATE_FILE, sha256_file

            dst = stage / STATE_FILE
            dst.parent.mkdir()
            if isinstance(state, (str, Path)):
                shutil.copy2(state, dst)
            else:
                state.save(dst)
            tags.update({"state_sha256": sha256_file(dst), "state_method": state_method,
                         "state_bytes": str(dst.stat().st_size)})
        (stage / "requests.jsonl").write_text(
            "".join(json.dumps(_request_json(r), ensure_ascii=False, default=str) + "\n" for r in sub.requests),
            encoding="utf-8")
        stage_pyfunc(stage, name, sha)
        run = start_run(c, st, name, f"{name} from v{parent_version}",
                        {"factsmith.kind": "edit", "factsmith.parent_version": str(parent_version),
                         "factsmith.method": sub.method or "", "factsmith.gate_passed": tags["gate_passed"]})
        c.log_artifacts(run.info.run_id, str(stage))
    stamp = int(time.time() * 1000)
    params = [Param("parent_version", str(parent_version)), Param("method", sub.method or ""),
              Param("n_requests", str(len(sub.requests)))]
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in sub.metrics.items()], params=params)
    return run


def _commit(c, st: Store, name: str, parent_version: int, expected: int, run, tags: Mapping[str, str],
            sub: _Submission, rejected: Iterable[tuple[Any, str]], reverts: Sequence[str],
            extra_records: Sequence[Mapping[str, Any]] | Callable[[int], Sequence[Mapping[str, Any]]]) -> int:
    """Create the version if ``expected`` is still the newest and record it, with every request's new state, in
    one ledger append. The caller holds the model's lock and finishes the run."""
    check_ledger(c, st, name)
    mv = create_checked(c, st, name, expected, run, tags, run.info.artifact_uri, f"register from version {parent_version}")
    v = int(mv.version)
    c.set_registered_model_alias(name, CANDIDATE, str(v))
    in_effect = facts_in(name, [i.version for i in lineage(name, parent_version, st)])
    records = []
    if reverts:
        was = facts_in(name, [i.version for i in lineage(name, expected, st)])
        for rec in was.values():
            if rec.get("request_id") in reverts:
                records.append(L.request_record("reverted", ledger_request(rec), v,
                                                f"reverted in version {v} (re-derived without it)"))
    new_ids = {L.request_fields(r)["request_id"] for r in sub.requests}
    for r in sub.requests:
        f = L.request_fields(r)
        old = in_effect.get(fact_key(f))
        if old is not None and old.get("request_id") not in new_ids:
            records.append(L.request_record("superseded", ledger_request(old), v,
                                            f"superseded by request {f['request_id']} in version {v}"))
    for r in sub.requests:
        records.append(L.request_record("applied", r, v, None if sub.gate_passed else "gate failed: not promotable",
                                        gate_passed=sub.gate_passed))
    for r, why in rejected:
        records.append(L.request_record("rejected", r, None, why))
    records += [dict(x) for x in (extra_records(v) if callable(extra_records) else extra_records)]
    append_records(c, name, records)
    return v


# --------------------------------------------------------------------------------------------------
# promote, rollback, list


def promote(name: str, version: int, requested_by: str | None = None, store: Store | None = None,
            hooks: H.Hooks | None = None) -> VersionInfo:
    """Move alias ``champion`` to ``version``; refuses (:class:`PromotionError`) a version whose gate failed.

    Then calls the promotion hooks (``hooks``; None: ``FACTSMITH_HOME/hooks.yaml`` when it exists), when the
    champion moved; a hook that fails is recorded (``hook_failed``) and does not undo the promotion."""
    check_name(name)
    hooks = H.load() if hooks is None else hooks  # a malformed hooks file refuses before anything moves
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        check_ledger(c, st, name)
        amap = aliases(c, name)
        info = info_of(get_version(c, name, version), amap)
        if not promotable(info):
            failed = ", ".join(f"{k[5:]} {v}" for k, v in info.tags.items() if k.startswith("gate."))
            raise PromotionError(f"model {name!r} version {version}: expected a version whose gate passed, found "
                                 f"gate_passed={info.tags.get('gate_passed')} ({failed or 'no metrics'}); "
                                 f"champion stays version {amap.get(CHAMPION)}")
        previous = amap.get(CHAMPION)
        c.set_registered_model_alias(name, CHAMPION, str(version))
        append_records(c, name, [L.model_record("promoted", version, previous_champion=previous,
                                         requested_by=requested_by)])
    if previous != version:
        H.notify(hooks, "promoted", name, version, previous, st, champion=version, requested_by=requested_by)
    return info_of(c.get_model_version(name, str(version)), aliases(c, name))


def rollback_to(name: str, version: int, *, promote_now: bool = False, reason: str | None = None,
                requested_by: str | None = None, store: Store | None = None,
                hooks: H.Hooks | None = None) -> VersionInfo:
    """A new version whose weights equal ``version``'s bit for bit (history is never rewritten).

    It stores no weights: its ``parent_version`` is ``version``, and loading it rebuilds exactly that
    version's weights (checked against the same hash). The target is rebuilt and verified first. Requests in
    effect in the newest version but not in the target become ``reverted``; requests of the target that the
    newest version had dropped are ``applied`` again. Then the promotion hooks are called as by :func:`promote`
    (event ``rollback``; ``previous_version``: the champion before when ``promote_now``, else the newest version)."""
    check_name(name)
    hooks = H.load() if hooks is None else hooks
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        check_ledger(c, st, name)
    amap = aliases(c, name)
    target = info_of(get_version(c, name, version), amap)
    if promote_now and not promotable(target):
        raise PromotionError(f"model {name!r}: cannot roll back to version {version} and promote it: its gate failed "
                             f"(gate_passed={target.tags.get('gate_passed')})")
    newest = newest_version(c, name)
    rebuild(name, version, st)  # refuse to roll back to weights that no longer verify
    prov = provenance()
    run = start_run(c, st, name, f"{name} rollback to v{version}",
                     {"factsmith.kind": "rollback", "factsmith.parent_version": str(version), **prov})
    with tempfile.TemporaryDirectory(prefix="factsmith-rollback-") as tmp:
        (Path(tmp) / "rollback.json").write_text(json.dumps(
            {"to": version, "from_newest": newest, "reason": reason, "requested_by": requested_by}) + "\n")
        stage_pyfunc(Path(tmp), name, target.weights_sha256)
        c.log_artifacts(run.info.run_id, tmp)
    tags = {"kind": "rollback", "storage": "parent", "parent_version": str(version), "rollback_from": str(newest),
            "weights_sha256": target.weights_sha256,
            "base_weights_sha256": target.tags.get("base_weights_sha256", ""),
            "gate_passed": "true" if promotable(target) else "false", "n_requests": "0", "method": "rollback", **prov}
    tags.update({k: v for k, v in target.tags.items() if k.startswith("gate.")})
    with finishing(c, run), st.lock(name):
        check_ledger(c, st, name)
        mv = create_checked(c, st, name, newest, run, tags, run.info.artifact_uri, f"rollback to version {version}")
        v = int(mv.version)
        c.set_registered_model_alias(name, CANDIDATE, str(v))
        now_facts = facts_in(name, [i.version for i in lineage(name, newest, st)])
        then_facts = facts_in(name, [i.version for i in lineage(name, version, st)])
        why = f"rollback to version {version}" + (f": {reason}" if reason else "")
        records = [L.model_record("rollback", v, to=version, from_newest=newest, reason=reason,
                                  requested_by=requested_by)]
        for key, rec in now_facts.items():
            if then_facts.get(key, {}).get("request_id") != rec.get("request_id"):
                records.append(L.request_record("reverted", ledger_request(rec), v, why))
        for key, rec in then_facts.items():
            if now_facts.get(key, {}).get("request_id") != rec.get("request_id"):
                records.append(L.request_record("applied", ledger_request(rec), v, why, via_rollback=True))
        previous = newest
        if promote_now:
            previous = aliases(c, name).get(CHAMPION)
            c.set_registered_model_alias(name, CHAMPION, str(v))
            records.append(L.model_record("promoted", v, previous_champion=previous, requested_by=requested_by))
        append_records(c, name, records)
    H.notify(hooks, "rollback", name, v, previous, st, champion=aliases(c, name).get(CHAMPION),
             requested_by=requested_by, reason=reason)
    return info_of(c.get_model_version(name, str(v)), aliases(c, name))


def record(name: str, records: Sequence[Mapping[str, Any]], store: Store | None = None) -> L.Head:
    """Append state changes made outside a registration (``quarantined`` rows, ``rejected`` requests) to the
    ledger of a registered model, under its lock, and move the registry's anchor."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    aliases(c, name)  # NotFoundError for an unregistered model
    with st.lock(name):
        return append_records(c, name, [dict(r) for r in records])


def versions(name: str, store: Store | None = None) -> list[VersionInfo]:
    """Every version of ``name``, oldest first, with aliases and lineage tags."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    amap = aliases(c, name)
    return [info_of(mv, amap) for mv in all_versions(c, name)]
