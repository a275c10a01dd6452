"""Where factsmith keeps its state: ``FACTSMITH_HOME`` (default ``~/.factsmith``), never the source tree."""

from __future__ import annotations

from pathlib import Path

from registry.store import home  # noqa: F401 -- the one rule for FACTSMITH_HOME, at the bottom of the order


def cache_dir() -> Path:
    """The editing cache (covariance statistics, context templates, corpora): an ``editing.store.Store`` root."""
    return home() / "cache"


def sandbox_cache() -> Path:
    """Cache of built sandbox models, keyed by the hash of (facts, config, seed, versions)."""
    return cache_dir() / "sandbox"


def models_dir() -> Path:
    return home() / "models"
