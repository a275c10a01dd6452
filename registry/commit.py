"""How a change reaches the registry: an MLflow run, a model version created only while the expected version is
still the newest, and one ledger append -- the commit point -- that records it. A version the ledger never
mentions is one whose creator died in between; the next change withdraws it.

The caller holds the model's lock (:meth:`registry.store.Store.lock`) around the check, the creation and the
append; across machines (a remote server, where the file lock does not reach) :func:`create_checked` still
refuses the loser of a race after the fact.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import ledger as L
from .errors import ConcurrencyError
from .lineage import newest_version
from .store import Store, all_versions, open_store

log = logging.getLogger(__name__)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(L.canonical(obj)).hexdigest()


def factsmith_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("factsmith")
    except PackageNotFoundError:
        return "unknown"


def git_commit() -> str | None:
    """The commit of the source tree factsmith runs from, when it is a git checkout (``+dirty`` if modified)."""
    root = Path(__file__).resolve().parents[1]  # the checkout holding registry/
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


def provenance() -> dict[str, str]:
    out = {"factsmith_version": factsmith_version()}
    commit = git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def anchor_of(client, name: str) -> L.Head | None:
    from mlflow.exceptions import MlflowException

    try:
        tag = (client.get_registered_model(name).tags or {}).get("ledger_head")
    except MlflowException:
        return None
    return L.Head.parse(tag) if tag else None


def check_ledger(client, store: Store, name: str) -> None:
    """Refuse to change the registry while the ledger is broken (it could not record the change); then
    withdraw versions a dead process left unrecorded. The caller holds the model's lock."""
    check = L.verify(name, anchor_of(client, name))
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
        check = L.verify(name, anchor_of(c, name))
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


def append_records(client, name: str, records: list[dict[str, Any]]) -> L.Head:
    """Append to the ledger after checking it against the registry's anchor, then move the anchor (the
    registered model's ``ledger_head`` tag) to the new head. The caller holds the model's lock."""
    head = L.append(name, records, anchor_of(client, name))
    client.set_registered_model_tag(name, "ledger_head", str(head))
    return head


def start_run(client, store: Store, name: str, run_name: str, tags: Mapping[str, str]):
    return client.create_run(store.experiment_id(name), run_name=run_name,
                             tags={"factsmith.model": name, **tags})


@contextmanager
def finishing(client, run) -> Iterator[None]:
    """Terminate the version's run: FINISHED when the block succeeds, FAILED (with the error) when not."""
    try:
        yield
    except BaseException as e:
        client.set_tag(run.info.run_id, "factsmith.error", f"{type(e).__name__}: {e}"[:4000])
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def create_checked(client, store: Store, name: str, expected_latest: int, run, tags: Mapping[str, str],
                    source: str, what: str):
    """Create a version of ``name`` if ``expected_latest`` is still the newest; else ConcurrencyError.
    The caller holds ``store.lock(name)`` and terminates the run (:func:`finishing`)."""
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
