"""Which weights a version has: resolving ``NAME@alias`` / ``NAME/3``, the lineage, loading, facts in effect.

Loading walks ``parent_version`` down to the base (``kind=base``, the whole Hugging Face directory) and copies
each version's weights patch back up (``storage=patch``; a rollback version stores nothing and points at the
version it restores), then checks the result against the version's ``weights_sha256`` tag
(:func:`editing.delta.weights_sha256`, as everywhere in factsmith). No arithmetic happens at load time, so a
version loads bit for bit as it was registered.

The facts in effect in a version are the ``applied`` ledger records of its lineage, the later one winning for
the same fact (subject and relation, or subject and prompt).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import ledger as L
from .errors import IntegrityError, NotFoundError, RegistryError
from .refs import Ref, check_name, parse_ref
from .store import Store, aliases, all_versions, get_version, local_path, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as factsmith sees it (from the MLflow model version and its tags)."""

    name: str
    version: int
    kind: str  # base | edit | rollback | revert
    parent_version: int | None
    aliases: tuple[str, ...]
    weights_sha256: str
    gate_passed: bool | None  # None for the base model (not gated)
    method: str | None
    n_requests: int
    created_at: str
    run_id: str | None
    source: str
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "parent_version": self.parent_version, "aliases": list(self.aliases),
                "weights_sha256": self.weights_sha256, "gate_passed": self.gate_passed, "method": self.method,
                "n_requests": self.n_requests, "created_at": self.created_at, "run_id": self.run_id,
                "source": self.source, "tags": dict(self.tags)}


def info_of(mv, alias_map: Mapping[str, int]) -> VersionInfo:
    t = dict(mv.tags or {})
    v = int(mv.version)
    gp = t.get("gate_passed")
    return VersionInfo(
        name=mv.name, version=v, kind=t.get("kind", "?"),
        parent_version=int(t["parent_version"]) if t.get("parent_version") else None,
        aliases=tuple(sorted(a for a, av in alias_map.items() if av == v)),
        weights_sha256=t.get("weights_sha256", ""),
        gate_passed=None if gp in (None, "n/a") else gp == "true",
        method=t.get("method") or None, n_requests=int(t.get("n_requests", "0")),
        created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        run_id=mv.run_id, source=mv.source, tags=t)


def newest_version(client, name: str) -> int:
    """The highest version number of ``name`` (0 when it has none)."""
    vs = all_versions(client, name)
    return int(vs[-1].version) if vs else 0


def resolve(ref: str | Ref, store: Store | None = None) -> VersionInfo:
    """The version behind ``NAME@alias`` or ``NAME/3``."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    st = store or open_store()
    c = st.client()
    amap = aliases(c, r.name)
    if r.alias is not None and r.alias not in amap:
        # from the model's aliases: MLflow's sqlite store reports a missing alias as an invalid parameter, not
        # as a missing resource
        raise NotFoundError(f"model {r.name!r} has no alias {r.alias!r}; aliases: "
                            f"{', '.join(f'{a} -> {v}' for a, v in sorted(amap.items())) or 'none'}")
    mv = get_version(c, r.name, amap[r.alias] if r.alias is not None else r.version)
    return info_of(mv, amap)


def artifacts_dir(client, store: Store, info: VersionInfo) -> Path:
    """The version's artifact folder on this machine (downloaded into the registry cache when remote)."""
    p = local_path(info.source)
    if p is not None:
        return p
    from mlflow.artifacts import download_artifacts

    from .store import registry_dir

    dst = registry_dir() / "cache" / check_name(info.name) / str(info.version)
    done = dst / ".complete"  # holds the downloaded folder, relative to dst
    if not done.exists():
        # downloaded beside dst under a name of its own, then renamed into place whole: two processes that
        # need the same version at once (two runs, two machines' workers on one FACTSMITH_HOME) each download,
        # the first rename wins and the other's copy is dropped; nobody reads a half-written file
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{info.version}.", dir=dst.parent))
        try:
            got = Path(download_artifacts(artifact_uri=info.source, dst_path=str(tmp), tracking_uri=store.uri))
            (tmp / ".complete").write_text(str(got.resolve().relative_to(tmp.resolve())), encoding="utf-8")
            if dst.exists() and not done.exists():  # a partial folder a killed process left (no .complete)
                stale = dst.with_name(f".stale.{uuid.uuid4().hex}")
                with contextlib.suppress(OSError):
                    os.rename(dst, stale)
                    shutil.rmtree(stale, ignore_errors=True)
            with contextlib.suppress(OSError):  # refused when another process's copy is already there
                os.rename(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dst / done.read_text(encoding="utf-8").strip()


def lineage(name: str, version: int, store: Store | None = None) -> list[VersionInfo]:
    """The version and its ancestors by ``parent_version``, base first."""
    st = store or open_store()
    c = st.client()
    amap = aliases(c, name)
    out: list[VersionInfo] = []
    v: int | None = version
    seen = set()
    while v is not None:
        if v in seen:
            raise RegistryError(f"model {name!r}: parent_version tags form a cycle at version {v}")
        seen.add(v)
        info = info_of(get_version(c, name, v), amap)
        out.append(info)
        if info.kind == "base":
            return out[::-1]
        if info.parent_version is None:
            raise RegistryError(f"model {name!r} version {v}: expected a parent_version tag (kind {info.kind}), "
                                f"found none")
        v = info.parent_version
    raise AssertionError("unreachable")


def rebuild(name: str, version: int, store: Store):
    """(model, tokenizer, info): the base directory with every patch along the lineage copied in, verified."""
    from editing.delta import weights_sha256

    from .weights import apply_patch, load_hf, load_patch

    c = store.client()
    chain = lineage(name, version, store)
    base = chain[0]
    model, tok = load_hf(artifacts_dir(c, store, base) / "model")
    for info in chain[1:]:
        if info.tags.get("storage") == "patch":
            patch = artifacts_dir(c, store, info) / "patch" / "weights.safetensors"
            if not patch.is_file():
                raise IntegrityError(f"model {name!r} version {info.version}: expected its weights patch at {patch}, "
                                     f"found none")
            apply_patch(model, load_patch(patch), f"{name}/{info.version}")
    want = chain[-1].weights_sha256
    got = weights_sha256(model)
    if got != want:
        raise IntegrityError(f"model {name!r} version {version}: expected weights SHA-256 {want}, rebuilt weights "
                             f"hash to {got} (lineage {' -> '.join(str(i.version) for i in chain)})")
    return model, tok, chain[-1]


STATE_FILE = "state/state.safetensors"  # a stateful method's state, in the version's artifacts


@dataclass(frozen=True)
class MethodState:
    """The editing method's state in effect in a version: the file a version stored (verified against its
    ``state_sha256`` tag), the method it belongs to, and the versions after it whose edits it does not hold."""

    method: str
    path: Path
    version: int  # the version that stored it
    sha256: str
    gaps: tuple[int, ...] = ()  # later edit versions of another method along the lineage (their keys are not in it)


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_of(name: str, version: int, store: Store) -> MethodState | None:
    """The method state in effect in ``version``: the one it stored; a rollback's is the restored version's (its
    ``parent_version``), so ``rollback --to V`` restores V's state exactly; an edit by a method without state
    leaves the state before it in effect (named in ``gaps``). None when no version of the lineage stored one.
    The file is checked against the storing version's ``state_sha256`` tag
    (:class:`~registry.errors.IntegrityError` on a mismatch), as the weights are against ``weights_sha256``."""
    c = store.client()
    gaps = []
    for info in reversed(lineage(name, version, store)):
        if info.kind == "rollback":
            continue  # its parent, next in the walk, is the version it restores
        want = info.tags.get("state_sha256")
        if want:
            path = artifacts_dir(c, store, info) / STATE_FILE
            if not path.is_file():
                raise IntegrityError(f"model {name!r} version {info.version}: expected its method state at {path}, "
                                     f"found none")
            got = sha256_file(path)
            if got != want:
                raise IntegrityError(f"model {name!r} version {info.version}: expected method state SHA-256 {want}, "
                                     f"the stored file hashes to {got}")
            return MethodState(info.tags.get("state_method", ""), path, info.version, got, tuple(sorted(gaps)))
        if info.kind in ("edit", "revert"):
            gaps.append(info.version)
    return None


@dataclass
class Checkout:
    """A version checked out for more work: its weights rebuilt and verified, its lineage, the base directory
    (tokenizer, a sandbox's facts and statistics text), and the method state in effect (verified)."""

    model: Any
    tokenizer: Any
    info: VersionInfo
    chain: list[VersionInfo]  # base first, ending with ``info``
    base_dir: Path
    state: MethodState | None = None


def checkout(name: str, version: int, store: Store) -> Checkout:
    model, tok, info = rebuild(name, version, store)
    chain = lineage(name, version, store)
    return Checkout(model, tok, info, chain, artifacts_dir(store.client(), store, chain[0]) / "model",
                    state_of(name, version, store))


@dataclass(frozen=True)
class RecordedEdit:
    """One edit as a version recorded it: enough to compute it again."""

    version: int
    method: str | None  # None: an old version whose delta did not record it (it cannot be recomputed)
    hparams: dict[str, Any] | None
    requests: list[dict[str, Any]]  # native request dicts, with the keep and rewrite prompts the edit used


def recorded_edits(infos: Sequence[VersionInfo], store: Store) -> list[RecordedEdit]:
    """The edits of edit and revert versions, in order (a revert version records the steps it recomputed)."""
    from editing.delta import Delta
    from editing.modeldir import DELTA

    c = store.client()
    out = []
    for info in infos:
        if info.kind not in ("edit", "revert"):
            continue
        art = artifacts_dir(c, store, info)
        meta = Delta.load(art / "delta" / DELTA).meta
        if "composed_of" in meta or "steps" in meta:
            out += [RecordedEdit(info.version, s["method"], s["hparams"], s["requests"]) for s in meta.get("steps", [])]
            continue
        reqs = [json.loads(x) for x in (art / "requests.jsonl").read_text(encoding="utf-8").split("\n") if x.strip()]
        out.append(RecordedEdit(info.version, meta.get("method") or None, meta.get("hparams"), reqs))
    return out


def load_model(ref: str, store: Store | None = None):
    """(model, tokenizer) of ``NAME@alias`` or ``NAME/3``, rebuilt bit-exactly and verified against the
    version's ``weights_sha256`` tag (:class:`~registry.errors.IntegrityError` on a mismatch)."""
    st = store or open_store()
    info = resolve(ref, st)
    t0 = time.perf_counter()
    model, tok, _ = rebuild(info.name, info.version, st)
    log.info("loaded %s (version %d) in %.2f s", ref, info.version, time.perf_counter() - t0)
    return model, tok


def facts_in(name: str, chain: Sequence[int]) -> dict[tuple[str, str], dict[str, Any]]:
    """fact key -> the ``applied`` ledger record in effect at the end of ``chain`` (versions base first)."""
    order = {v: i for i, v in enumerate(chain)}
    recs = [r for r in L.read(name) if r.get("event") == "applied" and r.get("version") in order
            and not r.get("via_rollback")]
    recs.sort(key=lambda r: (order[r["version"]], r["seq"]))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in recs:
        out[fact_key(r)] = r
    return out


def fact_key(rec: Mapping[str, Any]) -> tuple[str, str]:
    """The fact a ledger record is about: (subject, relation), or (subject, prompt) without a relation
    (as :meth:`validation.requests.Request.fact_key`)."""
    return (rec.get("subject") or "", rec.get("relation") or rec.get("prompt") or "")


def ledger_request(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger record back as a native request dict (to record a later state of the same request)."""
    return {"id": rec.get("request_id"), "subject": rec.get("subject"), "prompt": rec.get("prompt"),
            "target_new": rec.get("new"), "target_true": rec.get("old"), "relation": rec.get("relation"),
            "source": rec.get("source"), "requested_by": rec.get("requested_by"), "reason": rec.get("reason"),
            "requested_at": rec.get("requested_at")}


def promotable(info: VersionInfo) -> bool:
    return info.kind == "base" or info.gate_passed is True
