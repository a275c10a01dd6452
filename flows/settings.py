"""Where factsmith keeps its state: ``FACTSMITH_HOME`` (default ``~/.factsmith``), never the source tree."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state directory (created on first use)."""
    raw = os.environ.get("FACTSMITH_HOME")
    path = Path(raw).expanduser() if raw else Path.home() / ".factsmith"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """The editing cache (covariance statistics, context templates, corpora): an ``editing.store.Store`` root."""
    return home() / "cache"


def sandbox_cache() -> Path:
    """Cache of built sandbox models, keyed by the hash of (facts, config, seed, versions)."""
    return cache_dir() / "sandbox"


def models_dir() -> Path:
    return home() / "models"
