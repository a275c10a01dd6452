"""``factsmith export``: a registered version written out as a complete Hugging Face directory that any serving
stack loads (plain ``transformers``, vLLM, TGI): safetensors weights, config, tokenizer, and ``factsmith.json``
saying which version it is, its weights' SHA-256, its lineage and the facts its edits changed (old -> new, who
asked, in which version).

The directory is written beside ``out`` under a temporary name, its weights loaded back and hashed against the
version's ``weights_sha256`` tag, and only then renamed into place: a reader never sees half an export, and an
export that does not hash to its version is never published.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import IntegrityError, InvalidInputError
from .lineage import artifacts_dir, facts_in, lineage, rebuild, resolve
from .store import Store, open_store

MANIFEST = "factsmith.json"
FORMAT = 1


def manifest(name: str, version: int, store: Store) -> dict[str, Any]:
    """What ``factsmith.json`` says of a version: itself, its lineage (base first) and the facts in effect."""
    chain = lineage(name, version, store)
    info = chain[-1]
    facts = facts_in(name, [i.version for i in chain])
    return {
        "format": FORMAT,
        "model": name,
        "version": version,
        "aliases": list(info.aliases),
        "kind": info.kind,
        "weights_sha256": info.weights_sha256,
        "created_at": info.created_at,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lineage": [{"version": i.version, "kind": i.kind, "parent_version": i.parent_version, "method": i.method,
                     "n_requests": i.n_requests, "gate_passed": i.gate_passed, "weights_sha256": i.weights_sha256,
                     "created_at": i.created_at} for i in chain],
        "facts_changed": [{"subject": r.get("subject"), "relation": r.get("relation"), "prompt": r.get("prompt"),
                           "old": r.get("old"), "new": r.get("new"), "request_id": r.get("request_id"),
                           "requested_by": r.get("requested_by"), "reason": r.get("reason"),
                           "version": r.get("version"), "at": r.get("ts")}
                          for r in facts.values()],
    }


def export(ref: str, out: Path, store: Store | None = None, force: bool = False) -> dict[str, Any]:
    """Write the version behind ``ref`` (``NAME@alias``, ``NAME/3``) to ``out``; returns its manifest.

    An ``out`` that exists and is not empty is refused unless ``force`` (then it is replaced, in one rename
    once the new directory is verified).
    """
    from editing.delta import weights_sha256
    from editing.modeldir import load, write_edited

    st = store or open_store()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: is a file, expected a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InvalidInputError(f"--out {out}: exists and is not empty; pass --force to replace it")
    info = resolve(ref, st)
    model, tok, info = rebuild(info.name, info.version, st)  # verified against the version's hash
    man = manifest(info.name, info.version, st)
    base_dir = artifacts_dir(st.client(), st, lineage(info.name, info.version, st)[0]) / "model"

    def verify(tmp: Path) -> None:  # what a reader will load, loaded back: the version's weights, bit for bit
        back, _ = load(tmp)
        got = weights_sha256(back)
        if got != info.weights_sha256:
            raise IntegrityError(f"export of {info.name} version {info.version}: the written weights hash to {got}, "
                                 f"expected {info.weights_sha256}; nothing written to {out}")

    def write_manifest(path: Path) -> None:
        path.write_text(json.dumps(man, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    write_edited(model, tok, out, base_dir, {MANIFEST: write_manifest}, check=verify)
    return man


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The ``factsmith.json`` of an exported directory (None when it has none)."""
    p = Path(model_dir) / MANIFEST
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))
