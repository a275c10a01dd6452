"""Probe suites for the gate, built when a request brings none of its own.

* **paraphrases** -- other phrasings of the request's relation from the catalogue
  (``validation/gate/catalogue/relations.yaml``: the sandbox world's relations and the Wikidata properties of
  CounterFact / MQuAKE), found by the request's ``relation`` or by its prompt template;
* **neighbours** -- facts of *other* subjects with the same relation, from the model directory's
  ``facts.jsonl`` (sandbox models ship one) and the protected facts; the gate keeps only those the base
  model answers correctly (:func:`validation.gate.metrics.run_gate`);
* **subject probes** -- the edited subject's *other* facts (:func:`subject_probes`): the request's own
  ``attribute_prompts``, the subject's facts in ``facts.jsonl``, else the catalogue's other relations;
* **the probe bank** -- broad locality (:func:`probe_bank`): every fact of ``facts.jsonl`` and the catalogue's
  relations about the subjects the ledger has seen, none about the batch's subjects; the gate probes a fixed
  seeded sample of those the base model answers;
* **protected facts** -- an operator-maintained JSONL of facts that must never change
  (``{"id", "subject", "prompt", "target"}``, the prompt a ``{}`` template or the full text); always probed;
* **fluency** -- greedy generations from the requests' subjects and a fixed text sample (the model's own
  statistics corpus when it ships one, else :data:`FLUENCY_TEXT`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from editing import jsonl
from editing.modeldir import FACTS_FILE, STATS_CORPUS

from ..requests import Request

CATALOGUE = Path(__file__).parent / "catalogue" / "relations.yaml"

# A fixed, neutral English sample for perplexity when the model ships no text of its own.
FLUENCY_TEXT = (
    "The river runs through the middle of the old town, past the market square and the library. "
    "In the morning the bakers open their shops, and by noon the streets are full of people. "
    "Most visitors come in summer, when the days are long and the evenings are warm. "
    "The museum on the hill keeps maps, letters and paintings from the last three centuries. "
    "Children learn to swim in the lake, and in winter the same lake freezes over for skating. "
    "A train leaves for the capital every hour, and the journey takes a little more than two hours."
)
GENERATION_PROMPTS = ("{} is", "{} is known for", "The history of {}")


class ProbeError(ValueError):
    """A protected-facts file or catalogue is malformed (the message names the file, line and field)."""


@dataclass(frozen=True)
class Fact:
    """A fact the model should keep: full prompt text and the answer."""

    id: str
    subject: str
    relation: str | None
    prompt: str  # full text (subject filled in)
    target: str
    phrasings: tuple[str, ...] = ()  # the same fact in other words (full texts): a sandbox's other phrasings

    @property
    def texts(self) -> tuple[str, ...]:
        """Every phrasing of the fact, the main one first."""
        return (self.prompt,) + self.phrasings


@lru_cache(maxsize=4)
def catalogue(path: Path = CATALOGUE) -> dict[str, tuple[str, ...]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ProbeError(f"{path}: expected a mapping of relation -> templates")
    out = {}
    for rel, templates in data.items():
        if not isinstance(templates, list) or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
            raise ProbeError(f"{path}: relation {rel!r}: expected a list of templates with one '{{}}' each")
        out[str(rel)] = tuple(templates)
    return out


def relation_templates(req: Request, cat: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """The catalogue's templates for the request's relation, or for the relation whose list holds its prompt."""
    cat = catalogue() if cat is None else cat
    if req.relation and req.relation in cat:
        return cat[req.relation]
    for templates in cat.values():
        if req.prompt in templates:
            return templates
    return ()


def _text(req) -> str:
    return req.prompt.replace("{}", req.subject, 1)


def rewritten_facts(req, pool: Iterable[Fact]) -> list[Fact]:
    """The facts of ``pool`` that ``req`` rewrites: its subject's fact of its relation, or (no relation given)
    the subject's fact one of whose phrasings is the request's prompt."""
    text = _text(req)
    return [f for f in pool if f.subject == req.subject
            and ((req.relation and f.relation == req.relation) or text in f.texts)]


def model_templates(req, pool: Iterable[Fact]) -> tuple[str, ...]:
    """The model's own phrasings ("{}" = the subject) of the fact ``req`` rewrites (a sandbox's ``facts.jsonl``
    ships every phrasing it trained): what the request's relation is in the model's own world, whatever the
    catalogue knows of it."""
    out: dict[str, None] = {}
    for f in rewritten_facts(req, pool):
        out.update({t.replace(req.subject, "{}", 1): None for t in f.texts if req.subject in t})
    return tuple(out)


def rewrite_templates(req: Request, cat: dict[str, tuple[str, ...]] | None = None,
                      pool: Iterable[Fact] = ()) -> tuple[str, ...]:
    """The catalogue phrasing the editor trains on besides the request's prompt
    (:attr:`editing.requests.EditRequest.rewrite_prompts`): the relation's first template with the subject at
    the start of the text, when the prompt has it elsewhere. At the start of a text the subject's hidden state
    differs from the one after a prefix (no context before it; in GPT-2 the first position is the attention
    sink), and an edit optimised only on prompts with words before the subject did not carry to "Germany's
    capital city is". A relation the catalogue does not know takes it from the model's own phrasings of the fact
    (``pool``, :func:`model_templates`). The gate never probes this phrasing (:func:`paraphrases`)."""
    if req.prompt.startswith("{}"):
        return ()
    templates = relation_templates(req, cat) or model_templates(req, pool)
    return tuple(t for t in templates if t.startswith("{}") and t != req.prompt)[:1]


def paraphrases(req: Request, k: int, cat: dict[str, tuple[str, ...]] | None = None,
                pool: Iterable[Fact] = ()) -> tuple[str, ...]:
    """The request's own paraphrases, else up to ``k`` other phrasings of its fact: the model's own (``pool``:
    every phrasing a sandbox trained, :func:`model_templates`), then the catalogue's; never its prompt or the
    one the editor trains on (:func:`rewrite_templates`): held-out phrasings only. Without the model's own, a
    relation the catalogue lacks had no paraphrase probe at all, and its generalisation passed unmeasured (an
    outside check on a world of companies: an edit of "The first product of X was" still said the old product
    on "What launched X was", and the gate said generalization 1.000 on the one probe it had)."""
    if req.paraphrase_prompts:
        return req.paraphrase_prompts[:k] if k else req.paraphrase_prompts
    pool = list(pool)
    trained = set(rewrite_templates(req, cat, pool))
    templates = dict.fromkeys(model_templates(req, pool) + relation_templates(req, cat))
    others = [t for t in templates if t != req.prompt and t not in trained]
    return tuple(t.replace("{}", req.subject, 1) for t in (others[:k] if k else others))


def _fill(template: str, subject: str) -> str:
    return template.replace("{}", subject, 1) if "{}" in template else template


def load_protected(path: str | Path) -> list[Fact]:
    """Protected facts from JSONL; errors name the file, line and field."""
    p = Path(path)
    out = []
    for n, row in jsonl.objects(p, jsonl.read_text(p, ProbeError, "the protected facts"), ProbeError, comments=True):
        for name in ("subject", "prompt", "target"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ProbeError(f"{p}:{n}: field '{name}' is missing or empty")
        out.append(Fact(str(row.get("id") or f"{p.name}:{n}"), row["subject"], row.get("relation"),
                        _fill(row["prompt"], row["subject"]), row["target"]))
    return out


def model_facts(model_dir: str | Path) -> list[Fact]:
    """The facts a sandbox model directory says it knows (main phrasing each, the others in ``phrasings``); []
    for other models."""
    f = Path(model_dir) / FACTS_FILE
    if not f.is_file():
        return []
    out = []
    for n, r in jsonl.objects(f, f.read_text(encoding="utf-8"), ProbeError):
        if r.get("subject") is None:
            continue
        prompts = r.get("prompts") or [r.get("prompt")]
        out.append(Fact(f"{f.parent.name}:{n}", r["subject"], r.get("relation"), _fill(prompts[0], r["subject"]),
                        r["target"], tuple(_fill(p, r["subject"]) for p in prompts[1:])))
    return out


def neighbour_candidates(req: Request, pool: Iterable[Fact], edited_subjects: set[str], k: int,
                         seed: int = 0) -> list[Fact]:
    """Up to ``k`` facts of other subjects (none edited in this batch) with the request's relation, or with
    its prompt when it names no relation; a seeded sample, so that a gate re-run probes the same facts."""
    key_rel = req.relation
    same = []
    for f in pool:
        if f.subject in edited_subjects:
            continue
        if (key_rel and f.relation == key_rel) or f.prompt == req.prompt.replace("{}", f.subject, 1):
            same.append(f)
    rng = random.Random(f"{seed}:{req.id}")
    rng.shuffle(same)
    return same[:k]


_NAME_STOPWORDS = frozenset({"the", "of", "and", "de", "la", "le", "von", "van"})


def name_words(subject: str) -> list[str]:
    """The words of a subject's name, lower case, without articles and particles ("the United Kingdom" ->
    ["united", "kingdom"])."""
    return [w for w in re.findall(r"[\w'-]+", subject.lower()) if w not in _NAME_STOPWORDS and len(w) > 1]


def namesakes(req: Request, pool: Iterable[Fact], edited_subjects: set[str], k: int, seed: int = 0) -> list[Fact]:
    """Up to ``k`` facts, of any relation, of other subjects (none edited in this batch) whose name shares a word
    with the request's subject: North Korea's for an edit of South Korea, the United States' for the United
    Kingdom, East Ongul Island's for Lamplugh Island. A model reads a subject at its last token, so the keys of
    such names lie close and an edit of one reaches the other (the sandbox's twin world: 11 of 12 single MEMIT
    edits changed 1-3 of the twin's 3 facts). Those sharing the subject's last word first, then those sharing more
    words; a seeded order within each."""
    words = name_words(req.subject)
    if not words:
        return []
    mine, last = set(words), words[-1]
    ranked = []
    for f in pool:
        if f.subject in edited_subjects or f.subject == req.subject:
            continue
        theirs = name_words(f.subject)
        shared = mine.intersection(theirs)
        if shared:
            ranked.append((theirs[-1] != last, -len(shared), f))
    random.Random(f"{seed}:namesake:{req.id}").shuffle(ranked)
    ranked.sort(key=lambda x: x[:2])  # stable: the shuffle orders ties
    return [f for *_, f in ranked[:k]]


def _other_facts(reqs: list[Request], pool: Iterable[Fact], cat: dict[str, tuple[str, ...]]
                 ) -> list[list[tuple[str, str | None, str | None]]]:
    """One subject's facts that ``reqs`` (all about that subject) do not rewrite, one list per fact of (prompt,
    target or None, fact id), a list per phrasing: the requests' own ``attribute_prompts``, the subject's facts
    in ``pool`` in every phrasing the model ships, and only when those give none, the catalogue's other
    relations about the subject (their answer unknown: the base model's stands)."""
    subject = reqs[0].subject
    pool = list(pool)
    rewritten_rel = {r.relation for r in reqs if r.relation}
    rewritten = {r.text for r in reqs} | {p for r in reqs for p in r.paraphrase_prompts}
    rewritten |= {t.replace("{}", subject, 1) for r in reqs for t in relation_templates(r, cat)}
    mine = {f.id for r in reqs for f in rewritten_facts(r, pool)}
    rewritten |= {t for f in pool if f.id in mine for t in f.texts}
    groups: dict[str, list[tuple[str, str | None, str | None]]] = {}
    seen: set[str] = set()

    def add(key: str, row: tuple[str, str | None, str | None]) -> None:
        if row[0] not in rewritten and row[0] not in seen:
            seen.add(row[0])
            groups.setdefault(key, []).append(row)

    for r in reqs:
        for prompt, target in getattr(r, "attribute_prompts", ()) or ():
            add(prompt, (prompt, target, None))
    for f in pool:
        if f.subject == subject and f.id not in mine and f.relation not in rewritten_rel:
            for t in f.texts:
                add(f.id, (t, f.target, f.id))
    if not groups:
        for rel, templates in cat.items():
            if rel not in rewritten_rel:
                prompt = templates[0].replace("{}", subject, 1)
                add(rel, (prompt, None, f"catalogue:{rel}"))
    return list(groups.values())


def _by_subject(requests: list[Request]) -> dict[str, list[Request]]:
    """The requests grouped by subject, in first-seen order."""
    out: dict[str, list[Request]] = {}
    for r in requests:
        out.setdefault(r.subject, []).append(r)
    return out


def subject_probes(requests: list[Request], pool: Iterable[Fact], k: int, seed: int = 0,
                   cat: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Subject -> up to ``k`` probes of that subject's *other* facts: what an edit of the subject must leave alone
    (an edit of Germany's head of government, Germany's capital), each fact in its phrasings in turn (every fact
    once before any twice), so that the probes reach past the phrasings the editor keeps
    (:func:`keep_templates`). A seeded sample, stable across gate runs. Asked in the main phrasing only, an
    outside check on a world of companies passed edits that moved the subject's headquarters on "The city that
    hosts the headquarters of X is" and its first product on "What launched X was"."""
    cat = catalogue() if cat is None else cat
    pool = list(pool)
    out = {}
    for subject, reqs in _by_subject(requests).items():
        rng = random.Random(f"{seed}:subject:{subject}")
        groups = _other_facts(reqs, pool, cat)
        for g in groups:
            rng.shuffle(g)
        rng.shuffle(groups)
        probes = [g[i] for i in range(max((len(g) for g in groups), default=0)) for g in groups if i < len(g)]
        out[subject] = probes[:k] if k else probes
    return out


def keep_templates(requests: list[Request], pool: Iterable[Fact], k: int = 16, seed: int = 0,
                   cat: dict[str, tuple[str, ...]] | None = None, per_relation: int = 4,
                   unknown_relations: int = 4, include_first: bool = True) -> dict[str, tuple[str, ...]]:
    """Subject -> up to ``k`` templates ("{}" = the subject) of its other facts, for the editor to keep
    (:attr:`editing.requests.EditRequest.keep_prompts`): up to ``per_relation`` phrasings (the catalogue's, else
    the model's own) of each relation the model's facts give the subject, subject-first and not alternating (the subject's hidden state
    differs between the two, and an edit kept on one form alone moved the other), the request's own
    ``attribute_prompts``, and for a subject the model ships no facts about, ``unknown_relations`` catalogue
    relations. ``include_first`` keeps the relation's first phrasing too, the one the gate's subject probes ask:
    kept on the others alone, one capital edit of the tiny sandbox in three still moved the subject's facts
    there (12 capital swaps: subject locality 0.89 held out, 0.98 with it). The gate then checks that the
    keeping held through the solve and the batch's other updates, on whole greedy answers."""
    cat = catalogue() if cat is None else cat
    pool = list(pool)
    out = {}
    for subject, reqs in _by_subject(requests).items():
        rewritten_rel = {r.relation for r in reqs if r.relation}
        rewritten = {r.prompt for r in reqs} | {t for r in reqs for t in relation_templates(r, cat)}
        rewritten |= {t for r in reqs for t in model_templates(r, pool)}
        found: dict[str, None] = {}
        for r in reqs:
            for prompt, _ in getattr(r, "attribute_prompts", ()) or ():
                if subject in prompt:
                    found[prompt.replace(subject, "{}", 1)] = None
        rels = [f.relation for f in pool if f.subject == subject and f.relation and f.relation not in rewritten_rel]
        if not rels and not found:  # a subject the model ships no facts about: a few catalogue relations
            rels = sorted(set(cat) - rewritten_rel)
            random.Random(f"{seed}:keep:{subject}").shuffle(rels)
            rels = rels[:unknown_relations]
        for rel in dict.fromkeys(rels):
            # its phrasings, the catalogue's or else the model's own, subject-first and not, alternating
            mine = cat.get(rel) or tuple(dict.fromkeys(t.replace(subject, "{}", 1) for f in pool
                                                       if f.subject == subject and f.relation == rel
                                                       for t in f.texts if subject in t))
            rest = mine if include_first else (mine[1:] or mine)
            firsts, others = [t for t in rest if t.startswith("{}")], [t for t in rest if not t.startswith("{}")]
            order = [t for pair in zip(firsts, others) for t in pair] + firsts[len(others):] + others[len(firsts):]
            found.update({t: None for t in order[:per_relation]})
        out[subject] = tuple(t for t in found if t not in rewritten and t.count("{}") == 1)[:k]
    return out


def for_editor(requests: list[Request], pool: Iterable[Fact], seed: int = 0) -> list:
    """The requests as the editor takes them (:class:`editing.requests.EditRequest`), each with the subject's
    other facts to keep (:func:`keep_templates`) and the phrasing to train besides its prompt
    (:func:`rewrite_templates`): what the pipeline, the tests and the benchmarks edit with."""
    pool = list(pool)
    keep = keep_templates(requests, pool, seed=seed)
    return [r.to_edit_request(keep=keep.get(r.subject, ()), rewrite=rewrite_templates(r, pool=pool))
            for r in requests]


def probe_bank(pool: Iterable[Fact], subjects: Iterable[str], exclude: set[str], seed: int = 0,
               cat: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, str | None, str | None]]:
    """Broad-locality candidates, shuffled with ``seed``: (prompt, target or None, fact id) for every fact in
    ``pool`` and the catalogue's relations about every subject in ``subjects`` (e.g. those the ledger has
    edited), none about a subject in ``exclude`` (the batch's own: subject locality probes those)."""
    cat = catalogue() if cat is None else cat
    out: dict[str, tuple[str, str | None, str | None]] = {}
    for f in pool:
        if f.subject not in exclude:
            out.setdefault(f.prompt, (f.prompt, f.target, f.id))
    for s in sorted(set(subjects) - exclude):
        for rel, templates in cat.items():
            prompt = templates[0].replace("{}", s, 1)
            out.setdefault(prompt, (prompt, None, f"catalogue:{rel}"))
    bank = sorted(out.values(), key=lambda x: x[0])
    random.Random(f"{seed}:bank").shuffle(bank)
    return bank


def fluency_text(model_dir: str | Path, max_chars: int = 4000) -> str:
    """The fixed perplexity sample: the head of the model's statistics corpus, else FLUENCY_TEXT."""
    f = Path(model_dir) / STATS_CORPUS
    if f.is_file():
        with f.open(encoding="utf-8") as fh:
            text = fh.read(max_chars)
        if text.strip():
            return text
    return FLUENCY_TEXT
