"""Where factsmith keeps its state: ``FACTSMITH_HOME`` (default ``~/.factsmith``), never the source tree."""

from __future__ import annotations

from pathlib import Path

from registry.store import home  # noqa: F401 -- the one rule for FACTSMITH_HOME, at the bottom of the order


def cache_dir() -> Path:
    """The editing cache (covariance statistics, context templates, corpora): an :class:`editing.store.Cache` root."""
    return home() / "cache"


def sandbox_cache() -> Path:
    """Cache of built sandbox models, keyed by the hash of (facts, config, seed, versions)."""
    return cache_dir() / "sandbox"


def models_dir() -> Path:
    return home() / "models"


def protected_facts_file() -> Path:
    """The operator's standing protected facts (JSONL), used by every gate that names none, when present."""
    return home() / "protected_facts.jsonl"


def gate_policy_file() -> Path:
    """The operator's standing gate policy (YAML), used by every run that names none, when present."""
    return home() / "gate_policy.yaml"
