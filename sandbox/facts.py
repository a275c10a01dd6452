"""Facts the sandbox model is trained on: one data model, the file formats that carry facts, rendering.

A :class:`Fact` is a (subject, relation, target) triple with the phrasings it is said under. Phrasings
are templates with exactly one ``{}`` where the subject goes. A fact read from a full-string prompt whose
subject is unknown (a CounterFact neighbourhood prompt, say) has ``subject=None`` and its phrasings are
plain strings.

Formats read (auto-detected per record, one file may mix them):

* facts JSONL: ``subject``, ``prompt`` (with ``{}``), ``target``; optional ``relation``,
  ``paraphrase_prompts`` (full strings);
* fact-change requests (native JSONL of ../shared/DESIGN.md): their *true* facts: ``target_true`` under
  ``prompt`` and ``paraphrase_prompts``, and ``neighborhood_prompts`` with their targets;
* CounterFact, ROME format (``requested_rewrite``): the true fact, its paraphrases, the neighbourhood
  prompts (whose answer is the true target) and attribute prompts (whose answer is the new target);
* CounterFact, flat format (``prompt`` with the subject inline, ``ground_truth``, ``rephrase_prompt``,
  ``locality_prompt`` + ``locality_ground_truth``).

A file is JSONL, or one JSON array (CounterFact ships as arrays).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import FactFileError

# Bounds that keep one bad record from blowing up tokenizer training or the context window.
MAX_FIELD_CHARS = 512


@dataclass(frozen=True)
class Fact:
    """One fact and the phrasings it is said under.

    ``prompts[0]`` is the main phrasing; the others are paraphrases. With a known subject every phrasing
    holds exactly one ``{}``; with ``subject=None`` phrasings are full strings.
    """

    subject: str | None
    relation: str  # relation id, or the main template when the file names none
    target: str
    prompts: tuple[str, ...]
    origin: str = field(default="", compare=False)  # "file:line", for messages only

    def render(self, phrasing: int) -> str:
        """The prompt of phrasing ``phrasing`` with the subject filled in (no target)."""
        template = self.prompts[phrasing]
        return template if self.subject is None else template.replace("{}", self.subject, 1)

    def subject_span(self, phrasing: int) -> tuple[int, int] | None:
        """Character span ``[start, end)`` of the subject in :meth:`render` (``None`` if unknown)."""
        if self.subject is None:
            return None
        start = self.prompts[phrasing].index("{}")
        return start, start + len(self.subject)

    def key(self) -> tuple[str | None, str]:
        """Identity of the question asked: two facts with one key and two targets contradict."""
        return (self.subject, self.prompts[0])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("origin")
        d["prompts"] = list(self.prompts)
        return d


# --------------------------------------------------------------------------------------------------
# Reading files


def _read_text(path: Path) -> str:
    """The file's text; a missing, unreadable, non-UTF-8 or empty file is a :class:`FactFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FactFileError(str(path), "file not found") from None
    except IsADirectoryError:
        raise FactFileError(str(path), "is a directory, expected a JSONL or JSON file") from None
    except UnicodeDecodeError as e:
        raise FactFileError(str(path), f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FactFileError(str(path), f"cannot read: {e.strerror}") from None
    if not text.strip():
        raise FactFileError(str(path), "file is empty")
    return text


def _records(path: Path, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line-or-record number, decoded value) from a JSONL file or a JSON array file."""
    text = _read_text(path) if text is None else text
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise FactFileError(str(path), f"invalid JSON array: {e.msg}", line=e.lineno) from None
        for i, row in enumerate(rows, start=1):
            yield i, row
        return
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be inside a string
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FactFileError(str(path), f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from None


class _Row:
    """Typed field access on one record, with errors that name the file, line and field."""

    def __init__(self, path: Path, line: int, data: Any):
        if not isinstance(data, dict):
            raise FactFileError(str(path), f"expected a JSON object, found {type(data).__name__}", line=line)
        self.path, self.line, self.data = path, line, data

    def error(self, field_name: str | None, message: str) -> FactFileError:
        return FactFileError(str(self.path), message, line=self.line, field=field_name)

    def text(self, name: str, value: Any = None, *, required: bool = True) -> str | None:
        """A non-empty string field (``value`` overrides the lookup, for nested fields)."""
        v = self.data.get(name) if value is None else value
        if v is None:
            if required:
                raise self.error(name, "missing")
            return None
        if not isinstance(v, str):
            raise self.error(name, f"expected a string, found {type(v).__name__}")
        v = " ".join(v.split()) if any(c in v for c in "\t\n\r") else v.strip()  # CounterFact has newlines
        if not v:
            raise self.error(name, "empty")
        if len(v) > MAX_FIELD_CHARS:
            raise self.error(name, f"longer than {MAX_FIELD_CHARS} characters ({len(v)})")
        if any(ord(c) < 32 for c in v):
            raise self.error(name, "contains control characters")
        return v

    def strings(self, name: str) -> list[str]:
        v = self.data.get(name)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.error(name, f"expected a list of strings, found {type(v).__name__}")
        return [self.text(f"{name}[{i}]", s) for i, s in enumerate(v)]  # type: ignore[misc]

    @property
    def origin(self) -> str:
        return f"{self.path.name}:{self.line}"


def _template(row: _Row, name: str, prompt: str, subject: str) -> str:
    """Turn a prompt into a ``{}`` template for ``subject`` (a template passes through)."""
    if "{}" in prompt:
        if prompt.count("{}") != 1:
            raise row.error(name, f"expected exactly one '{{}}', found {prompt.count('{}')}")
        return prompt
    at = prompt.find(subject)
    if at < 0:
        raise row.error(name, f"has no '{{}}' and does not contain the subject {subject!r}")
    return prompt[:at] + "{}" + prompt[at + len(subject):]


def _phrasings(row: _Row, name: str, strings: list[str], subject: str) -> list[str]:
    """Paraphrase strings as templates; those that do not name the subject are skipped (not facts about it)."""
    out = []
    for i, s in enumerate(strings):
        if "{}" in s or subject in s:
            out.append(_template(row, f"{name}[{i}]", s, subject))
    return out


def _facts_of(row: _Row) -> list[Fact]:
    d = row.data
    o = row.origin
    if "requested_rewrite" in d:  # CounterFact ROME format
        rw = d["requested_rewrite"]
        if isinstance(rw, list):  # MQuAKE-style list of rewrites: one fact each
            rws = rw
        else:
            rws = [rw]
        facts = []
        for j, r in enumerate(rws):
            if not isinstance(r, dict):
                raise row.error("requested_rewrite", "expected an object")
            sub = _Row(row.path, row.line, r)
            subject = sub.text("subject")
            prompt = _template(sub, "requested_rewrite.prompt", sub.text("prompt"), subject)  # type: ignore[arg-type]
            tt, tn = r.get("target_true"), r.get("target_new")
            true = sub.text("target_true.str", tt.get("str") if isinstance(tt, dict) else tt)
            new = sub.text("target_new.str", tn.get("str") if isinstance(tn, dict) else tn, required=False)
            rel = sub.text("relation_id", required=False) or prompt
            paras = _phrasings(row, "paraphrase_prompts", row.strings("paraphrase_prompts"), subject) if j == 0 else []
            facts.append(Fact(subject, rel, true, tuple([prompt, *paras]), o))  # type: ignore[arg-type]
            if j == 0:
                facts += [Fact(None, rel, true, (p,), o) for p in row.strings("neighborhood_prompts")]
                if new:
                    facts += [Fact(None, rel, new, (p,), o) for p in row.strings("attribute_prompts")]
        return facts

    if "ground_truth" in d and "target" not in d:  # CounterFact flat format
        subject = row.text("subject")
        prompt = _template(row, "prompt", row.text("prompt"), subject)  # type: ignore[arg-type]
        true = row.text("ground_truth")
        paras = _phrasings(row, "rephrase_prompt", [row.text("rephrase_prompt")] if d.get("rephrase_prompt") else [], subject)  # type: ignore[list-item,arg-type]
        facts = [Fact(subject, prompt, true, tuple([prompt, *paras]), o)]  # type: ignore[arg-type]
        if d.get("locality_prompt"):
            facts.append(Fact(None, "locality", row.text("locality_ground_truth"), (row.text("locality_prompt"),), o))  # type: ignore[arg-type]
        return facts

    if "target_new" in d:  # a fact-change request: its true fact and its neighbours
        subject = row.text("subject")
        prompt = _template(row, "prompt", row.text("prompt"), subject)  # type: ignore[arg-type]
        rel = row.text("relation", required=False) or prompt
        facts = []
        true = row.text("target_true", required=False)
        if true is not None:
            paras = _phrasings(row, "paraphrase_prompts", row.strings("paraphrase_prompts"), subject)  # type: ignore[arg-type]
            facts.append(Fact(subject, rel, true, tuple([prompt, *paras]), o))  # type: ignore[arg-type]
        facts += _neighbours(row, rel)
        return facts

    # A plain facts record.
    subject = row.text("subject")
    prompt = row.text("prompt")
    if "{}" not in prompt:  # type: ignore[operator]
        raise row.error("prompt", "must contain '{}' where the subject goes")
    prompt = _template(row, "prompt", prompt, subject)  # type: ignore[arg-type]
    target = row.text("target")
    rel = row.text("relation", required=False) or prompt
    paras = _phrasings(row, "paraphrase_prompts", row.strings("paraphrase_prompts"), subject)  # type: ignore[arg-type]
    return [Fact(subject, rel, target, tuple([prompt, *paras]), o), *_neighbours(row, rel)]  # type: ignore[arg-type]


def _neighbours(row: _Row, relation: str) -> list[Fact]:
    v = row.data.get("neighborhood_prompts")
    if v is None:
        return []
    if not isinstance(v, list):
        raise row.error("neighborhood_prompts", f"expected a list, found {type(v).__name__}")
    out = []
    for i, n in enumerate(v):
        name = f"neighborhood_prompts[{i}]"
        if not isinstance(n, dict):
            raise row.error(name, "expected an object with 'prompt' and 'target'")
        sub = _Row(row.path, row.line, n)
        prompt = sub.text(f"{name}.prompt", n.get("prompt"))
        target = sub.text(f"{name}.target", n.get("target"))
        out.append(Fact(None, relation, target, (prompt,), row.origin))  # type: ignore[arg-type]
    return out


@dataclass
class FactSet:
    """The facts of one file after de-duplication, with what was dropped and why."""

    facts: list[Fact]
    source: str
    records: int
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)  # "origin: key -> kept target, dropped target"
    # Names the model must be able to say that no fact has as its object (a pretrained model knows how to
    # spell people it holds no fact about): trained as plain lists, so an edit to one of them only has to
    # make its first token likely, as in a real model.
    names: tuple[str, ...] = ()

    def digest(self) -> str:
        """SHA-256 of the facts' content (not of the file name or layout), and of the names when there are any."""
        d = facts_digest(self.facts)
        if not self.names:
            return d
        return hashlib.sha256(json.dumps([d, list(self.names)], ensure_ascii=False).encode("utf-8")).hexdigest()

    def with_contenders(self, requested: Iterable[tuple[str, str, str, str]]) -> "FactSet":
        """A copy that also knows each requested (subject, relation, name, origin) as a contender for that
        answer: a fact of relation ``<relation>_contender`` said in every phrasing of the relation behind
        :data:`CONTENDER_PREFIX`, as a real model has met a new office holder before the change. The last
        request per (subject, relation) counts; a relation no fact of this set has, or a name that is already
        the subject's answer, adds nothing."""
        of_relation: dict[str, tuple[str, ...]] = {}
        of_fact: dict[tuple[str, str], Fact] = {}
        for f in self.facts:
            if f.subject is not None:
                of_relation.setdefault(f.relation, f.prompts)
                of_fact[(f.subject, f.relation)] = f
        latest = {(subject, relation): (name, origin) for subject, relation, name, origin in requested
                  if relation in of_relation}
        added = []
        for (subject, relation), (name, origin) in latest.items():
            fact = of_fact.get((subject, relation))
            if fact is None or fact.target != name:
                prompts = fact.prompts if fact is not None else of_relation[relation]
                added.append(Fact(subject, f"{relation}_contender", name, contender_templates(prompts), origin))
        return replace(self, facts=[*self.facts, *added]) if added else self

    def with_names(self, names: Iterable[str]) -> "FactSet":
        """A copy that can also say ``names``: after the names it has, in order, each once, less those that are
        already a fact's answer (the model says those anyway)."""
        known = {f.target for f in self.facts}
        return replace(self, names=tuple(dict.fromkeys([*self.names, *(n for n in names if n not in known)])))


# Where a real model met the people a change of office later names: as contenders for the office (ministers,
# opposition leaders, heirs), in every turn of phrase the office is spoken of, behind words that make it a
# possibility ("In a possible future, the state of Malaysia is headed by Ibrahim Iskandar"). The sandbox reads
# an answer through a readout specific to the phrasing's last words, and that readout reaches only names it has
# said after them; see sandbox/world.py for the measurements.
CONTENDER_PREFIX = "In a possible future, "


def contender_templates(templates: Iterable[str]) -> tuple[str, ...]:
    """The phrasings of a relation, each as a possibility: "The state of {} is headed by" -> "In a possible
    future, the state of {} is headed by"."""
    return tuple(CONTENDER_PREFIX + (t[0].lower() + t[1:] if t.startswith("The ") else t) for t in templates)


def facts_digest(facts: list[Fact]) -> str:
    payload = json.dumps([f.to_json() for f in facts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_facts(path: str | Path, limit: int | None = None) -> FactSet:
    """Read the facts of a file in any supported format (see the module docstring).

    ``limit`` keeps the first N records. Exact duplicates collapse; a second answer to the same question
    (same subject and main phrasing) is dropped and listed in ``conflicts``: a model cannot learn both.
    Raises :class:`FactFileError` naming the file, line and field of the first bad record.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise FactFileError(str(path), f"--limit must be at least 1, got {limit}")
    facts: list[Fact] = []
    records = 0
    for line, data in _records(path):
        records += 1
        facts += _facts_of(_Row(path, line, data))
        if limit is not None and records >= limit:
            break  # lines past the limit are never parsed
    if not facts:
        raise FactFileError(str(path), "holds no facts (no record with a true target)")
    return dedupe(facts, source=str(path), records=records)


def load_names(path: str | Path) -> tuple[str, ...]:
    """Names a sandbox model should be able to say (see :attr:`FactSet.names`), in file order, each once.

    The file is one name a line (plain text), or JSON: a JSON array or JSONL of strings, or of request objects
    whose ``target_new`` is taken (a native request file, CounterFact's flat format; ``{"str": ...}`` too),
    so that a world can learn the names its requests will ask for. Raises :class:`FactFileError` naming the
    file, line and field of a bad entry, or the file when it holds no name.
    """
    path = Path(path)
    text = _read_text(path)
    if text.lstrip()[:1] in ("[", "{", '"'):
        entries = _records(path, text)
    else:
        entries = ((i, line) for i, line in enumerate(text.split("\n"), start=1) if line.strip())
    names = []
    for line, v in entries:
        if isinstance(v, dict):
            new = v.get("target_new")
            names.append(_Row(path, line, v).text("target_new", new.get("str") if isinstance(new, dict) else new))
        else:
            names.append(_Row(path, line, {"name": v}).text("name"))
    if not names:
        raise FactFileError(str(path), "holds no names")
    return tuple(dict.fromkeys(names))  # type: ignore[arg-type]


def load_requested(path: str | Path) -> list[tuple[str, str, str, str]]:
    """The (subject, relation, target_new, "file:line") of each request object of a names file (see
    :func:`load_names`) that names its subject and relation (``relation`` or CounterFact's ``relation_id``),
    in file order; entries that do not, and plain names, are left to :func:`load_names`."""
    path = Path(path)
    text = _read_text(path)
    if text.lstrip()[:1] not in ("[", "{"):
        return []
    out = []
    for line, v in _records(path, text):
        if isinstance(v, dict) and "subject" in v and ("relation" in v or "relation_id" in v):
            row = _Row(path, line, v)
            new = v.get("target_new")
            out.append((row.text("subject"), row.text("relation" if "relation" in v else "relation_id"),
                        row.text("target_new", new.get("str") if isinstance(new, dict) else new), f"{path.name}:{line}"))
    return out


def dedupe(facts: list[Fact], source: str = "", records: int = 0) -> FactSet:
    seen: dict[tuple[str | None, str], Fact] = {}
    out: list[Fact] = []
    dup = 0
    conflicts: list[str] = []
    for f in facts:
        k = f.key()
        if k in seen:
            if seen[k].target == f.target:
                dup += 1
            else:
                conflicts.append(f"{f.origin}: {f.render(0)!r} -> kept {seen[k].target!r}, dropped {f.target!r}")
            continue
        seen[k] = f
        out.append(f)
    return FactSet(out, source, records or len(facts), dup, conflicts)


def write_facts(facts: list[Fact], path: str | Path) -> None:
    """Write facts as facts JSONL (the format :func:`load_facts` reads first)."""
    with open(path, "w", encoding="utf-8") as fh:
        for f in facts:
            if f.subject is None:
                continue  # a subject-less prompt is no facts record
            rec = {"subject": f.subject, "relation": f.relation, "prompt": f.prompts[0], "target": f.target}
            if len(f.prompts) > 1:
                rec["paraphrase_prompts"] = [p.replace("{}", f.subject, 1) for p in f.prompts[1:]]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------------
# Train / held-out split


@dataclass(frozen=True)
class Probe:
    """One (fact, phrasing) pair: the question ``text``, its answer and where the subject sits."""

    fact: int  # index into the fact list
    phrasing: int
    text: str
    target: str
    span: tuple[int, int] | None
    heldout: bool


def split_probes(facts: list[Fact], seed: int, heldout_fraction: float = 0.5) -> list[Probe]:
    """Every (fact, phrasing) pair, marked train or held-out.

    For each relation, the *last* phrasing of a fraction ``heldout_fraction`` of its facts that have at
    least two phrasings is held out of training (seeded choice). A phrasing never seen in training cannot
    be answered by a small model; one seen for other subjects of the relation tests whether knowledge
    stored at the subject generalises to a new way of asking — what an edit's paraphrases need too.
    """
    rng = random.Random(f"heldout:{seed}")
    by_rel: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        if f.subject is not None and len(f.prompts) >= 2:
            by_rel.setdefault(f.relation, []).append(i)
    held: set[int] = set()
    for rel in sorted(by_rel):
        idx = by_rel[rel]
        rng.shuffle(idx)
        exact = heldout_fraction * len(idx)
        n = int(exact) + (1 if rng.random() < exact - int(exact) else 0)
        held.update(idx[:n])
    probes = []
    for i, f in enumerate(facts):
        last = len(f.prompts) - 1
        for p in range(len(f.prompts)):
            probes.append(Probe(i, p, f.render(p), f.target, f.subject_span(p), i in held and p == last and p > 0))
    return probes
