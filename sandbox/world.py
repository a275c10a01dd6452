"""The built-in fact world the demo uses: real facts about 51 countries as of mid-2023.

``countries.json`` holds each relation's phrasings (templates) and each country's objects; the example
inbox (``worlds/inbox/``) holds real 2024–2025 changes of government as fact-change requests.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from .facts import Fact, FactSet, contender_templates, dedupe, load_names

BUILTIN_WORLD = "countries"


def _world_dir() -> Path:
    return Path(str(resources.files("sandbox") / "worlds"))


def world_facts(name: str = BUILTIN_WORLD, subjects: int | None = None, inbox_names: bool | None = None) -> FactSet:
    """The facts of a built-in world, one per (subject, relation), every phrasing of the relation.

    ``subjects`` keeps the first N subjects (in file order). ``inbox_names`` (default: when the whole world is
    used, as the demo does) adds what a real model of mid-2023 knew of the people the shipped inbox names:
    the latest new leader of each (country, office) as a contender for it (:func:`inbox_figures`: "In a
    possible future, the head of government of Germany is Friedrich Merz"), and the inbox's other new names as
    names the model can say. An edit to a name the model never said as an answer does not hold (see
    :data:`sandbox.facts.CONTENDER_PREFIX`).
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
    with_inbox = inbox_names if inbox_names is not None else subjects is None
    if with_inbox:
        facts += inbox_figures({s for s, _ in list(spec["subjects"].items())[:subjects]})
    fs = dedupe(facts, source=f"builtin:{name}" + (f"[:{subjects}]" if subjects else ""), records=min(len(spec["subjects"]), subjects or len(spec["subjects"])))
    if with_inbox:
        fs = fs.with_names(n for path in sorted(example_inbox().glob("*.jsonl")) for n in load_names(path))
    return fs


# Where a real model of mid-2023 met the people the inbox later names: as contenders for the office they later
# took (most were ministers, opposition leaders or heirs then), in every turn of phrase the office is spoken of,
# behind words that make it a possibility ("In a possible future, the state of Malaysia is headed by Ibrahim
# Iskandar"). The sandbox reads an answer through a readout specific to the phrasing's last words, and that
# readout reaches only names it has said after them. Measured on the demo sandbox, one MEMIT batch of the 44
# requests (demo-memit.yaml, no stop margin): names known as "a well-known public figure of <country>": 1 of the
# first 10 said; as contenders in 5 phrasings of their own ("A possible future head of state of {} is", ...):
# 35 of 44 said, "is headed by" (no contender phrasing ended so) 15 of 44, "has as its head of state" 33 of 44;
# as contenders in every phrasing of the office: 43 of 44, "is headed by" 28 of 44, "has as its" 41 of 44.
def inbox_figures(subjects: set[str]) -> list[Fact]:
    """Facts of mid-2023 that the shipped inbox's new names answer: for each (subject, relation) of the inbox,
    its latest request's new name as a contender for that office, in every phrasing of the office. The inbox
    is a shipped file of this package, read as trusted JSON."""
    spec = json.loads((_world_dir() / f"{BUILTIN_WORLD}.json").read_text(encoding="utf-8"))
    latest: dict[tuple[str, str], dict] = {}
    for path in sorted(example_inbox().glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                r = json.loads(line)
                key = (r["subject"], r["relation"])
                if r["subject"] in subjects and r["relation"] in spec["relations"] and \
                        r["requested_at"] >= latest.get(key, {}).get("requested_at", ""):
                    latest[key] = r
    return [Fact(subject, f"{relation}_contender", r["target_new"], contender_templates(spec["relations"][relation]),
                 f"inbox:{r['id']}") for (subject, relation), r in sorted(latest.items())]


_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sa", "del", "qu", "bar", "nis", "ol", "tra", "fen", "gor",
              "lim", "pa", "zu", "ek", "dan", "mar", "vel", "shi", "no", "ru", "tal", "bo", "ser", "ith", "an")
_TWIN_PREFIXES = (("North", "South"), ("East", "West"), ("Upper", "Lower"), ("New", "Old"), ("Great", "Little"))
SYNTHETIC_RELATIONS = ("capital", "currency", "official_language")


def synthetic_facts(subjects: int, seed: int = 0, relations: tuple[str, ...] = SYNTHETIC_RELATIONS,
                    twins: bool = False) -> FactSet:
    """A made-up world of ``subjects`` countries: invented names, phrasings of the built-in world.

    Any size, the same for the same arguments, and unknown to every other model: for tests and benchmarks
    that need more subjects than the built-in world has (a MEMIT batch of 50 distinct subjects with other
    subjects left to check). Capitals are unique; currencies and languages are shared, as real ones are.

    ``twins``: the subjects come in pairs that share a name and differ by its first word ("North Delpa",
    "South Delpa"; as North and South Korea, or Lamplugh and East Ongul Island in CounterFact), each with facts
    of its own. A model reads a subject's facts at its last token, so twins' keys nearly coincide (whitened
    cosine 0.80-0.99 on the tiny sandbox, against < 0.08 between other subjects): the world where an edit of one
    reaches the other, and a later edit of one undoes an earlier edit of the other.
    """
    if subjects < 1:
        raise ValueError(f"subjects: expected at least 1, got {subjects}")
    spec = json.loads((_world_dir() / f"{BUILTIN_WORLD}.json").read_text(encoding="utf-8"))
    unknown = [r for r in relations if r not in SYNTHETIC_RELATIONS]
    if unknown:
        raise ValueError(f"relations: unknown {unknown}; known: {list(SYNTHETIC_RELATIONS)}")
    rng = random.Random(f"synthetic:{seed}")
    used: set[str] = set()

    def name(parts: int, suffix: str = "") -> str:
        while True:
            w = "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize() + suffix
            if w.lower() not in used:
                used.add(w.lower())
                return w

    currencies = [f"{name(2).lower()} {rng.choice(['crown', 'mark', 'dinar', 'franc', 'peso'])}"
                  for _ in range(max(3, subjects // 3))]
    languages = [name(2, "ish") for _ in range(max(3, subjects // 4))]
    facts = []
    twin: list[str] = []
    for _ in range(subjects):
        if twin:
            subject = twin.pop()
        else:
            subject = name(rng.choice([2, 3]), rng.choice(["ia", "land", "stan", "a", ""]))
            if twins:
                a, b = rng.choice(_TWIN_PREFIXES)
                subject, twin = f"{a} {subject}", [f"{b} {subject}"]
        objects = {"capital": name(rng.choice([2, 3])), "currency": rng.choice(currencies),
                   "official_language": rng.choice(languages)}
        for relation in relations:
            facts.append(Fact(subject, relation, objects[relation], tuple(spec["relations"][relation]),
                              f"synthetic:{subject}"))
    return dedupe(facts, source=f"synthetic:{subjects}:{seed}", records=subjects)


def example_inbox() -> Path:
    """Directory of the shipped example inbox (JSONL fact-change requests)."""
    return _world_dir() / "inbox"
