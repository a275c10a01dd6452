"""What the edited model says, by greedy decoding, in the benchmarks: the gate's probes (the sandbox's facts and
the relation catalogue) for each batch of requests, before and after, summarised over batches."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _common as C


def model_facts(model_dir: Path) -> list:
    """The sandbox's facts about a subject (validation.gate.probes.Fact: subject, prompt, target), [] without a
    facts.jsonl."""
    from validation.gate.probes import model_facts as mf

    return [f for f in mf(model_dir) if f.subject]


def with_probes(requests: list, pool: list, seed: int = 0) -> list:
    """The requests as the pipeline edits them (validation.gate.probes.for_editor): each with its subject's other
    facts to keep and a subject-first phrasing to train besides its prompt."""
    import dataclasses
    from types import SimpleNamespace

    from validation.gate.probes import keep_templates, rewrite_templates

    shims = [SimpleNamespace(subject=r.subject, relation=None, prompt=r.prompt, attribute_prompts=())
             for r in requests]
    keep = keep_templates(shims, pool, seed=seed)
    return [dataclasses.replace(r, keep_prompts=keep.get(r.subject, ()), rewrite_prompts=rewrite_templates(s, pool=pool))
            for r, s in zip(requests, shims)]


def catalogue_probes(model, tok, subjects: list[str], confidence: float = 0.5,
                     old_targets: dict[str, set[str]] | None = None) -> list[tuple[str, str]]:
    """(prompt, the base model's answer) for the relation catalogue's first phrasing of each relation about each
    subject, where the base model's first token is at least ``confidence`` likely: the gate's subject probes for
    a subject the model ships no other facts about (validation.gate.metrics, ``probe_confidence``). As the gate
    does, an answer that names one of ``old_targets[subject]`` (the old targets of its edits) is left out: it is
    the edited fact in other words, to move with the edit, not another fact."""
    from flows.ask import answers
    from validation.gate.answers import mentions
    from validation.gate.probes import catalogue

    pairs = [(s, t[0].replace("{}", s, 1)) for s in subjects for t in catalogue().values()]
    if not pairs:
        return []
    old_targets = old_targets or {}
    return [(a.prompt, a.answer.strip()) for (s, _), a in zip(pairs, answers(model, tok, [p for _, p in pairs], top=1))
            if a.top and a.top[0]["prob"] >= confidence and a.answer.strip()
            and not any(mentions(a.answer, t) for t in old_targets.get(s, ()))]


def greedy_says(model, tok, prompts: list[str], targets: list[str]) -> list[bool]:
    """Whether the greedy answer to each prompt says its target (validation.gate.answers.says, the gate's test)."""
    from flows.ask import answers
    from validation.gate.answers import says

    if not prompts:
        return []
    return [says(a.continuation, t) for a, t in zip(answers(model, tok, prompts, top=1), targets)]


@dataclass
class GreedyProbes:
    """The greedy probes of one edit call, chosen on the base model: prompts whose answer the edit must change
    (rewrite, paraphrase: say target_new) or keep (neighbour, subject: the subject's other facts, other: a
    seeded sample of other subjects' facts), each kept only where the base model says its expected answer. A
    subject with no other facts in the model's facts is probed as the gate does: the catalogue's relations
    about it that the base model answers with confidence, expected to keep that answer."""

    rewrite: list[tuple[str, str]]
    paraphrase: list[tuple[str, str]]
    neighbour: list[tuple[str, str]]
    subject: list[tuple[str, str]]
    other: list[tuple[str, str]]

    @classmethod
    def choose(cls, model, tok, batch: list, facts: list, other_sample: int, seed: int) -> "GreedyProbes":
        edited = {r.subject for r in batch}
        texts = {r.text for r in batch}
        subject = [(f.prompt, f.target) for f in facts if f.subject in edited and f.prompt not in texts]
        rest = [(f.prompt, f.target) for f in facts if f.subject not in edited]
        random.Random(f"{seed}:other:{C.ids_digest(batch)}").shuffle(rest)
        keep = []
        for probes in (subject, [(p, t) for r in batch for p, t in r.neighborhood_prompts], rest[:other_sample]):
            ok = greedy_says(model, tok, [p for p, _ in probes], [t for _, t in probes])
            keep.append([x for x, k in zip(probes, ok) if k])
        subj, neigh, other = keep
        covered = {f.subject for f in facts if f.subject in edited and f.prompt not in texts}
        old = {}
        for r in batch:
            if r.target_true:
                old.setdefault(r.subject, set()).add(r.target_true)
        subj += [(p, a) for p, a in catalogue_probes(model, tok, sorted(edited - covered), old_targets=old)
                 if p not in texts]
        return cls([(r.text, r.target_new) for r in batch],
                   [(p, r.target_new) for r in batch for p in r.paraphrase_prompts], neigh, subj, other)

    def score(self, model, tok) -> dict[str, list[bool]]:
        """kind -> per probe: the edited model says the new target (rewrite, paraphrase) or still says the kept
        answer (neighbour, subject, other)."""
        kinds = ("rewrite", "paraphrase", "neighbour", "subject", "other")
        probes = [(k, p, t) for k in kinds for p, t in getattr(self, k)]
        ok = greedy_says(model, tok, [p for _, p, _ in probes], [t for *_, t in probes])
        out: dict[str, list[bool]] = {k: [] for k in kinds}
        for (k, _, _), o in zip(probes, ok):
            out[k].append(o)
        return out


def summarize_greedy(parts: list[dict[str, list[bool]]]) -> dict[str, Any]:
    """Greedy efficacy / paraphrase, and the shares of neighbour, subject and other-subject facts kept, pooled
    over a case's calls, with each measure's probe count."""
    names = {"rewrite": "efficacy_greedy", "paraphrase": "paraphrase_greedy", "neighbour": "neighbourhood_greedy",
             "subject": "subject_locality", "other": "other_facts_kept"}
    res: dict[str, Any] = {}
    for kind, name in names.items():
        xs = [x for p in parts for x in p[kind]]
        res[name] = C.share(xs)
        res[name + "_probes"] = len(xs)
    return res
