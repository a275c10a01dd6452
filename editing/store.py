"""The injected cache for what is expensive to recompute: covariance statistics, context templates.

Entries are keyed by the SHA-256 of everything that determines them (a JSON description: upstream weights
hash, layer, corpus hash, sample count, dtype, ...), never by a folder or model name. Tensors are written
as safetensors, small values as JSON; every write goes to a temporary file renamed into place, so two
processes computing the same entry cannot leave a torn file behind. ``Cache(None)`` caches nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def digest(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class Cache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def _path(self, kind: str, key: str, suffix: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / kind / f"{key}{suffix}"

    def _write(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get_tensors(self, kind: str, description: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        path = self._path(kind, digest(description), ".safetensors")
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # a damaged cache entry is recomputed, not trusted
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None

    def put_tensors(self, kind: str, description: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(kind, digest(description), ".safetensors")
        if path is None:
            return
        from safetensors.torch import save_file

        meta = {"description": json.dumps(description, sort_keys=True, default=str)}
        self._write(path, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta))

    def get_json(self, kind: str, description: dict[str, Any]) -> Any | None:
        path = self._path(kind, digest(description), ".json")
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["value"]
        except (ValueError, KeyError) as e:
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None

    def put_json(self, kind: str, description: dict[str, Any], value: Any) -> None:
        path = self._path(kind, digest(description), ".json")
        if path is None:
            return
        text = json.dumps({"description": description, "value": value}, sort_keys=True, default=str)
        self._write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
