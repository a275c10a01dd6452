"""The built-in fact world the demo uses: real facts about 51 countries as of mid-2023.

``countries.json`` holds each relation's phrasings (templates) and each country's objects; the example
inbox (``worlds/inbox/``) holds real 2024–2025 changes of government as fact-change requests.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .facts import Fact, FactSet, dedupe

BUILTIN_WORLD = "countries"


def _world_dir() -> Path:
    return Path(str(resources.files("sandbox") / "worlds"))


def world_facts(name: str = BUILTIN_WORLD, subjects: int | None = None) -> FactSet:
    """The facts of a built-in world, one per (subject, relation), every phrasing of the relation.

    ``subjects`` keeps the first N subjects (in file order).
    """
    if name != BUILTIN_WORLD:
        raise ValueError(f"unknown built-in world {name!r}; known: {BUILTIN_WORLD!r}")
    spec = json.loads((_world_dir() / f"{name}.json").read_text(encoding="utf-8"))
    if subjects is not None and subjects < 1:
        raise ValueError(f"subjects: expected at least 1, got {subjects}")
    facts = []
    for subject, objects in list(spec["subjects"].items())[:subjects]:
        for relation, target in objects.items():
            templates = spec["relations"][relation]
            facts.append(Fact(subject, relation, target, tuple(templates), f"{name}.json:{subject}"))
    return dedupe(facts, source=f"builtin:{name}" + (f"[:{subjects}]" if subjects else ""), records=min(len(spec["subjects"]), subjects or len(spec["subjects"])))


def example_inbox() -> Path:
    """Directory of the shipped example inbox (JSONL fact-change requests)."""
    return _world_dir() / "inbox"
