"""Changing the registry: ``init`` a base model, ``register`` an edit, ``promote``, ``rollback_to``, ``record``.

Storage (see :mod:`registry.weights`): version 1 (``kind=base``) stores the whole Hugging Face directory under
the run's ``model/`` artifact folder. Every later ``kind=edit`` version stores

* ``patch/weights.safetensors`` -- the full new values of only the tensors the edit changed;
* ``delta/delta.safetensors`` -- the edit's low-rank factors (audit, re-derivation; not needed to load);
* ``gate/gate.json|md|html``, ``edit.json``, ``requests.jsonl``.

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

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from . import ledger as L
from .errors import ConcurrencyError, InvalidInputError, PromotionError, RegistryError
from .lineage import (VersionInfo, facts_in, fact_key, info_of, ledger_request, lineage, load_model,  # noqa: F401
                      newest_version, promotable, rebuild, resolve)
from .refs import check_name
from .store import Store, aliases, all_versions, get_version, open_store

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
MAIN_METRICS = ("reliability", "generalization", "locality", "protected", "kl", "perplexity_ratio",
                "entropy_drop", "max_norm_growth")


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(L.canonical(obj)).hexdigest()


def _factsmith_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("factsmith")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    """The commit of the source tree factsmith runs from, when it is a git checkout (``+dirty`` if modified)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance() -> dict[str, str]:
    out = {"factsmith_version": _factsmith_version()}
    commit = _git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def _anchor_of(client, name: str) -> L.Head | None:
    from mlflow.exceptions import MlflowException

    try:
        tag = (client.get_registered_model(name).tags or {}).get("ledger_head")
    except MlflowException:
        return None
    return L.Head.parse(tag) if tag else None


def _check_ledger(client, store: Store, name: str) -> None:
    """Refuse to change the registry while the ledger is broken (it could not record the change); then
    withdraw versions a dead process left unrecorded. The caller holds the model's lock."""
    check = L.verify(name, _anchor_of(client, name))
    if not check.ok:
        raise L.LedgerError(f"model {name!r}: refusing to change the registry: the ledger is broken: "
                            f"{check.problems[0]} (factsmith audit --verify --name {name})")
    withdraw_unrecorded(client, store, name)


def reconcile(name: str, store: Store | None = None) -> list[int]:
    """Check the ledger and withdraw the versions an interrupted registration left (see
    :func:`withdraw_unrecorded`), under the model's lock; returns the withdrawn version numbers. A pipeline
    calls it before choosing the parent of its edit."""
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        check = L.verify(name, _anchor_of(c, name))
        if not check.ok:
            raise L.LedgerError(f"model {name!r}: the ledger is broken: {check.problems[0]} "
                                f"(factsmith audit --verify --name {name})")
        return withdraw_unrecorded(c, st, name)


def withdraw_unrecorded(client, store: Store, name: str) -> list[int]:
    """Delete the versions of ``name`` that the ledger never mentions; returns their numbers.

    Appending to the ledger is a change's commit point: every ``init``, ``register`` and ``rollback``
    creates its version and records it under the model's lock, and a version with no ledger record is one
    whose creator died in between (kill -9, power loss). Such a version has no accounted-for requests, so it
    is withdrawn (its run is marked ``factsmith.withdrawn`` and FAILED) before the next change, as if the dead
    registration never happened. Only for the embedded store, where the lock reaches every writer: on a
    remote server another machine may be between the two steps right now (and keeps its own ledger)."""
    if not store.embedded:
        return []
    recorded = {r.get("version") for r in L.read(name)}
    gone = []
    for mv in all_versions(client, name):
        v = int(mv.version)
        if v in recorded:
            continue
        client.delete_model_version(name, str(v))
        if mv.run_id:
            client.set_tag(mv.run_id, "factsmith.withdrawn",
                           f"version {v} was created but never recorded in the ledger (its process died)")
            client.set_terminated(mv.run_id, "FAILED")
        gone.append(v)
    if gone:
        log.warning("%s: withdrew version(s) %s: created but never recorded in the ledger (an interrupted "
                    "registration)", name, ", ".join(map(str, gone)))
    return gone


def _append(client, name: str, records: list[dict[str, Any]]) -> L.Head:
    """Append to the ledger after checking it against the registry's anchor, then move the anchor (the
    registered model's ``ledger_head`` tag) to the new head. The caller holds the model's lock."""
    head = L.append(name, records, _anchor_of(client, name))
    client.set_registered_model_tag(name, "ledger_head", str(head))
    return head


def _start_run(client, store: Store, name: str, run_name: str, tags: Mapping[str, str]):
    return client.create_run(store.experiment_id(name), run_name=run_name,
                             tags={"factsmith.model": name, **tags})


@contextmanager
def _finishing(client, run) -> Iterator[None]:
    """Terminate the version's run: FINISHED when the block succeeds, FAILED (with the error) when not."""
    try:
        yield
    except BaseException as e:
        client.set_tag(run.info.run_id, "factsmith.error", f"{type(e).__name__}: {e}"[:4000])
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def _create_checked(client, store: Store, name: str, expected_latest: int, run, tags: Mapping[str, str],
                    source: str, what: str):
    """Create a version of ``name`` if ``expected_latest`` is still the newest; else ConcurrencyError.
    The caller holds ``store.lock(name)`` and terminates the run (:func:`_finishing`)."""
    newest = newest_version(client, name)
    if newest != expected_latest:
        client.set_tag(run.info.run_id, "factsmith.refused", f"newest version is {newest}, expected {expected_latest}")
        raise ConcurrencyError(
            f"model {name!r}: {what} expected version {expected_latest} to be the newest, found version {newest}: "
            f"someone registered in between; rebase onto version {newest} and try again")
    mv = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=dict(tags))
    mine = int(mv.version)
    between = [int(m.version) for m in all_versions(client, name) if expected_latest < int(m.version) < mine]
    if between:  # only possible without a shared lock (a remote server): the lower number won
        client.delete_model_version(name, str(mine))
        client.set_tag(run.info.run_id, "factsmith.refused", f"lost to version(s) {between}")
        raise ConcurrencyError(
            f"model {name!r}: {what} expected version {expected_latest} to be the newest, found version "
            f"{between[0]} registered concurrently; version {mine} was withdrawn")
    return mv


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
        _check_ledger(c, st, name)
        prov = _provenance()
        run = _start_run(c, st, name, f"{name} v1 (base)", {"factsmith.kind": "base", **prov})
        with _finishing(c, run), tempfile.TemporaryDirectory(prefix="factsmith-init-") as tmp:
            stage_model_dir(d, Path(tmp))
            c.log_artifacts(run.info.run_id, tmp, "model")
            tags = {"kind": "base", "storage": "full", "weights_sha256": sha, "base_weights_sha256": sha,
                    "gate_passed": "n/a", "n_requests": "0", "source_dir": str(d.resolve()), **prov}
            mv = _create_checked(c, st, name, 0, run, tags, run.info.artifact_uri, "init")
            c.set_registered_model_alias(name, CHAMPION, str(mv.version))
            _append(c, name, [L.model_record("base", int(mv.version), weights_sha256=sha,
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
             store: Store | None = None) -> VersionInfo:
    """Register an edited model as a new version of ``name`` derived from ``parent_version``.

    ``model`` is the edited model (an ``nn.Module``) or its directory; ``delta`` a :class:`editing.delta.Delta`
    or its file (default: ``delta.safetensors`` in the model directory). ``requests`` default to the delta's
    (or edit.json's); ``gate_passed`` and ``metrics`` to ``reports_dir/gate.json``. ``rejected`` are
    (request, reason) pairs the gate or bisection left out (ledger state ``rejected``). The registration is
    refused with :class:`ConcurrencyError` when ``expected_latest`` (default ``parent_version``) is no longer
    the newest version. ``reverts`` names requests in effect in ``expected_latest`` that this version leaves
    out (ledger state ``reverted``; see :mod:`registry.revert`). ``extra_records`` (or a function of the new
    version number that returns them) go into the same ledger append, the registration's commit point: a
    pipeline run records its quarantined and superseded rows and the run itself together with the version.
    """
    from editing.delta import Delta, weights_sha256

    from .weights import changed_tensors, load_hf, save_patch

    check_name(name)
    if kind not in ("edit", "revert"):
        raise InvalidInputError(f"register: kind {kind!r}: expected 'edit' or 'revert'")
    t0 = time.perf_counter()
    st = store or open_store()
    c = st.client()
    parent = info_of(get_version(c, name, parent_version), aliases(c, name))
    expected = parent_version if expected_latest is None else expected_latest
    with st.lock(name):
        _check_ledger(c, st, name)
    newest = newest_version(c, name)
    if newest != expected:  # fail before the expensive part; checked again under the lock
        raise ConcurrencyError(f"model {name!r}: register from version {parent_version} expected version {expected} "
                               f"to be the newest, found version {newest}: rebase onto version {newest}")

    model_dir = None
    if isinstance(model, (str, Path)):
        model_dir = Path(model)
        model, _ = load_hf(model_dir)
    if delta is None:
        if model_dir is None or not (model_dir / "delta.safetensors").is_file():
            raise InvalidInputError("register: expected a delta (or a model directory with delta.safetensors), found none")
        delta = model_dir / "delta.safetensors"
    if not isinstance(delta, Delta):
        delta = Delta.load(delta)
    if edit_json is None and model_dir is not None and (model_dir / "edit.json").is_file():
        edit_json = model_dir / "edit.json"
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
    requests = list(requests)
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
    nums = _numbers(metrics or {})

    # the parent's weights, rebuilt and verified; the edit must have been computed on exactly them
    parent_model, _, _ = rebuild(name, parent_version, st)
    on = delta.meta.get("base_weights_sha256")
    if on and on != parent.weights_sha256:
        raise InvalidInputError(f"register: the delta was computed on weights {on}, but version {parent_version} "
                                f"of {name!r} has weights {parent.weights_sha256}")
    changed = changed_tensors(parent_model, model)
    allowed = {f"{n}.weight" for n in delta.layers}
    outside = sorted(set(changed) - allowed)
    if outside:
        raise InvalidInputError(f"register: expected the edited model to differ from version {parent_version} only in "
                                f"the delta's matrices {sorted(allowed)}, found changes in {outside[:5]}")
    if not changed:
        log.warning("%s: the edited model equals version %d (the delta changed no weight)", name, parent_version)
    sha = weights_sha256(model)
    del parent_model

    base_sha = parent.tags.get("base_weights_sha256", "")
    content_hashes = [L.request_fields(r)["content_hash"] for r in requests]
    tags = {"kind": kind, "storage": "patch", "parent_version": str(parent_version), "weights_sha256": sha,
            "base_weights_sha256": base_sha, "method": method or "", "n_requests": str(len(requests)),
            "hparams_sha256": _sha256_json(hparams) if hparams is not None else "",
            "requests_sha256": _sha256_json(content_hashes), "gate_passed": "true" if gate_passed else "false",
            "changed_tensors": ",".join(sorted(changed))[:4000], **_provenance()}
    tags.update({f"gate.{k}": f"{nums[k]:.6g}" for k in MAIN_METRICS if k in nums})
    tags.update(extra_tags or {})

    with tempfile.TemporaryDirectory(prefix="factsmith-register-") as tmp:
        stage = Path(tmp)
        (stage / "patch").mkdir()
        save_patch(changed, stage / "patch" / "weights.safetensors",
                   {"model": name, "parent_version": str(parent_version), "weights_sha256": sha})
        (stage / "delta").mkdir()
        delta.save(stage / "delta" / "delta.safetensors")
        if reports_dir is not None:
            (stage / "gate").mkdir()
            for f in ("gate.json", "gate.md", "gate.html"):
                if (Path(reports_dir) / f).is_file():
                    shutil.copy2(Path(reports_dir) / f, stage / "gate" / f)
        if edit_record is not None:
            (stage / "edit.json").write_text(json.dumps(edit_record, ensure_ascii=False, indent=2, default=str) + "\n",
                                             encoding="utf-8")
        (stage / "requests.jsonl").write_text(
            "".join(json.dumps(_request_json(r), ensure_ascii=False, default=str) + "\n" for r in requests),
            encoding="utf-8")
        run = _start_run(c, st, name, f"{name} from v{parent_version}",
                         {"factsmith.kind": "edit", "factsmith.parent_version": str(parent_version),
                          "factsmith.method": method or "", "factsmith.gate_passed": tags["gate_passed"]})
        c.log_artifacts(run.info.run_id, str(stage))
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    params = [Param("parent_version", str(parent_version)), Param("method", method or ""),
              Param("n_requests", str(len(requests)))]
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in nums.items()], params=params)

    with _finishing(c, run), st.lock(name):
        _check_ledger(c, st, name)
        mv = _create_checked(c, st, name, expected, run, tags, run.info.artifact_uri,
                             f"register from version {parent_version}")
        v = int(mv.version)
        c.set_registered_model_alias(name, CANDIDATE, str(v))
        chain = [i.version for i in lineage(name, parent_version, st)]
        in_effect = facts_in(name, chain)
        records = []
        if reverts:
            was = facts_in(name, [i.version for i in lineage(name, expected, st)])
            for rec in was.values():
                if rec.get("request_id") in reverts:
                    records.append(L.request_record("reverted", ledger_request(rec), v,
                                                    f"reverted in version {v} (re-derived without it)"))
        new_ids = {L.request_fields(r)["request_id"] for r in requests}
        for r in requests:
            f = L.request_fields(r)
            old = in_effect.get(fact_key(f))
            if old is not None and old.get("request_id") not in new_ids:
                records.append(L.request_record("superseded", ledger_request(old), v,
                                                f"superseded by request {f['request_id']} in version {v}"))
        for r in requests:
            records.append(L.request_record("applied", r, v, None if gate_passed else "gate failed: not promotable",
                                            gate_passed=gate_passed))
        for r, why in rejected:
            records.append(L.request_record("rejected", r, None, why))
        records += [dict(x) for x in (extra_records(v) if callable(extra_records) else extra_records)]
        _append(c, name, records)
    log.info("%s: registered version %d from %d in %.2f s", name, v, parent_version, time.perf_counter() - t0)
    return info_of(c.get_model_version(name, str(v)), aliases(c, name))


# --------------------------------------------------------------------------------------------------
# promote, rollback, list


def promote(name: str, version: int, requested_by: str | None = None, store: Store | None = None) -> VersionInfo:
    """Move alias ``champion`` to ``version``; refuses (:class:`PromotionError`) a version whose gate failed."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        _check_ledger(c, st, name)
        amap = aliases(c, name)
        info = info_of(get_version(c, name, version), amap)
        if not promotable(info):
            failed = ", ".join(f"{k[5:]} {v}" for k, v in info.tags.items() if k.startswith("gate."))
            raise PromotionError(f"model {name!r} version {version}: expected a version whose gate passed, found "
                                 f"gate_passed={info.tags.get('gate_passed')} ({failed or 'no metrics'}); "
                                 f"champion stays version {amap.get(CHAMPION)}")
        previous = amap.get(CHAMPION)
        c.set_registered_model_alias(name, CHAMPION, str(version))
        _append(c, name, [L.model_record("promoted", version, previous_champion=previous,
                                         requested_by=requested_by)])
    return info_of(c.get_model_version(name, str(version)), aliases(c, name))


def rollback_to(name: str, version: int, *, promote_now: bool = False, reason: str | None = None,
                requested_by: str | None = None, store: Store | None = None) -> VersionInfo:
    """A new version whose weights equal ``version``'s bit for bit (history is never rewritten).

    It stores no weights: its ``parent_version`` is ``version``, and loading it rebuilds exactly that
    version's weights (checked against the same hash). The target is rebuilt and verified first. Requests in
    effect in the newest version but not in the target become ``reverted``; requests of the target that the
    newest version had dropped are ``applied`` again."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    with st.lock(name):
        _check_ledger(c, st, name)
    amap = aliases(c, name)
    target = info_of(get_version(c, name, version), amap)
    if promote_now and not promotable(target):
        raise PromotionError(f"model {name!r}: cannot roll back to version {version} and promote it: its gate failed "
                             f"(gate_passed={target.tags.get('gate_passed')})")
    newest = newest_version(c, name)
    rebuild(name, version, st)  # refuse to roll back to weights that no longer verify
    prov = _provenance()
    run = _start_run(c, st, name, f"{name} rollback to v{version}",
                     {"factsmith.kind": "rollback", "factsmith.parent_version": str(version), **prov})
    with tempfile.TemporaryDirectory(prefix="factsmith-rollback-") as tmp:
        (Path(tmp) / "rollback.json").write_text(json.dumps(
            {"to": version, "from_newest": newest, "reason": reason, "requested_by": requested_by}) + "\n")
        c.log_artifacts(run.info.run_id, tmp)
    tags = {"kind": "rollback", "storage": "parent", "parent_version": str(version), "rollback_from": str(newest),
            "weights_sha256": target.weights_sha256,
            "base_weights_sha256": target.tags.get("base_weights_sha256", ""),
            "gate_passed": "true" if promotable(target) else "false", "n_requests": "0", "method": "rollback", **prov}
    tags.update({k: v for k, v in target.tags.items() if k.startswith("gate.")})
    with _finishing(c, run), st.lock(name):
        _check_ledger(c, st, name)
        mv = _create_checked(c, st, name, newest, run, tags, run.info.artifact_uri, f"rollback to version {version}")
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
        if promote_now:
            previous = aliases(c, name).get(CHAMPION)
            c.set_registered_model_alias(name, CHAMPION, str(v))
            records.append(L.model_record("promoted", v, previous_champion=previous, requested_by=requested_by))
        _append(c, name, records)
    return info_of(c.get_model_version(name, str(v)), aliases(c, name))


def record(name: str, records: Sequence[Mapping[str, Any]], store: Store | None = None) -> L.Head:
    """Append state changes made outside a registration (``quarantined`` rows, ``rejected`` requests) to the
    ledger of a registered model, under its lock, and move the registry's anchor."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    aliases(c, name)  # NotFoundError for an unregistered model
    with st.lock(name):
        return _append(c, name, [dict(r) for r in records])


def versions(name: str, store: Store | None = None) -> list[VersionInfo]:
    """Every version of ``name``, oldest first, with aliases and lineage tags."""
    check_name(name)
    st = store or open_store()
    c = st.client()
    amap = aliases(c, name)
    return [info_of(mv, amap) for mv in all_versions(c, name)]
