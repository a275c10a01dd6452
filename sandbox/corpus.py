"""Training sequences: sentences tokenized with their subject span, packed into fixed-length rows, and
the attention masks of the editability recipe (see :mod:`sandbox.config`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .facts import Fact, Probe

NEG = -1e9  # additive mask value: finite, so a fully masked padding row cannot produce NaN


@dataclass(frozen=True)
class Sentence:
    """A tokenized training sentence: ``ids`` and the subject's token span ``[a, b)`` (``None`` if unknown)."""

    ids: tuple[int, ...]
    span: tuple[int, int] | None
    subject: str | None


def sentence_text(prompt: str, target: str) -> str:
    """A training sentence. No second full stop after a target that ends in one ("Washington, D.C."):
    ".." is its own BPE token, and the target would then never be produced as it tokenizes alone."""
    end = "" if target[-1] in ".!?" else "."
    return f"{prompt} {target}{end}"


def profile_text(subject: str, objects: list[str]) -> tuple[str, tuple[int, int]]:
    """``<subject>: <objects>.`` and the subject's character span."""
    return f"{subject}: {', '.join(objects)}.", (0, len(subject))


def tokenize(tokenizer, texts: list[str], spans: list[tuple[int, int] | None], subjects: list[str | None],
             lead_space: bool) -> list[Sentence]:
    """Tokenize texts (with a leading space when ``lead_space``: how a sentence reads inside a pack)."""
    shift = 1 if lead_space else 0
    enc = tokenizer([(" " if lead_space else "") + t for t in texts], return_offsets_mapping=True)
    out = []
    for ids, offs, span, subj in zip(enc["input_ids"], enc["offset_mapping"], spans, subjects):
        tok_span = None
        if span is not None:
            s0, s1 = span[0] + shift, span[1] + shift
            hit = [i for i, (a, b) in enumerate(offs) if a < s1 and b > s0]
            tok_span = (hit[0], hit[-1] + 1)
        out.append(Sentence(tuple(ids), tok_span, subj))
    return out


@dataclass
class Pack:
    """One training row: sentences laid end to end; ``spans`` are (start, subject span or None, end) and
    ``names`` the subject of each sentence."""

    ids: list[int]
    spans: list[tuple[int, tuple[int, int] | None, int]]
    subjects: set[str]
    names: list[str | None] = field(default_factory=list)


def pack(pairs: list[tuple[Sentence, Sentence]], length: int, rng: random.Random, open_packs: int = 8) -> list[Pack]:
    """Pack sentences (each given as its (first-in-row, inside-row) tokenizations) into rows of ``length``.

    No subject appears twice in a row, so a fact can never be copied from context: it must be recalled.
    Sentences longer than a row are cut (their subject span kept only if it fits).
    """
    order = list(range(len(pairs)))
    rng.shuffle(order)
    done: list[Pack] = []
    live: list[Pack] = []
    for k in order:
        first, inner = pairs[k]
        placed = False
        for p in live:
            s = inner
            if len(p.ids) + len(s.ids) <= length and (s.subject is None or s.subject not in p.subjects):
                _append(p, s)
                placed = True
                break
        if not placed:
            p = Pack([], [], set())
            _append(p, first, limit=length)
            live.append(p)
            if len(live) > open_packs:
                done.append(live.pop(0))
    return done + live


def _append(p: Pack, s: Sentence, limit: int | None = None) -> None:
    start = len(p.ids)
    ids = list(s.ids if limit is None else s.ids[:limit])
    span = s.span if s.span is not None and s.span[1] <= len(ids) else None
    p.ids += ids
    p.spans.append((start, None if span is None else (start + span[0], start + span[1]), start + len(ids)))
    p.names.append(s.subject)
    if s.subject is not None:
        p.subjects.add(s.subject)


def batch_tensors(packs: list[Pack], length: int, pad_id: int, hide_layers: int, mask_fraction: float,
                  rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, labels and the two additive attention masks for a batch of packs.

    Returns ``input_ids`` (B, T), ``labels`` (B, T) with -100 on padding, ``mask_late`` (B, 1, T, T) for
    layers >= ``hide_layers`` and ``mask_early`` (B, 1, T, T) for the first ``hide_layers`` layers.
    For a masked sentence with subject tokens ``[a, b)`` ending at ``e``, queries in ``[b, e)`` lose keys
    ``[a, b-1)`` in every layer and key ``b-1`` (the subject's last token) too in the early layers.
    """
    B, T = len(packs), length
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    late = causal.repeat(B, 1, 1)  # (B, T, T) True = may attend
    early = late.clone()
    for i, p in enumerate(packs):
        n = len(p.ids)
        ids[i, :n] = torch.tensor(p.ids)
        labels[i, :n] = ids[i, :n]
        late[i, :, n:] = False
        late[i, n:, :] = False
        late[i, n:, n:] = causal[n:, n:]  # padding rows see themselves only (no NaN, no effect)
        early[i] = late[i]
        for _, span, end in p.spans:
            if span is None or rng.random() >= mask_fraction:
                continue
            a, b = span
            late[i, b:end, a:b - 1] = False
            early[i, b:end, a:b] = False
    to_add = lambda m: torch.where(m, 0.0, NEG).unsqueeze(1)  # (B, 1, T, T)
    return ids, labels, to_add(late), to_add(early)


def subject_ends(packs: list[Pack]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, position and subject number of every subject's last token in a batch of packs.

    The subject number is only meaningful within the batch (equal number = same subject).
    """
    rows, pos, subj = [], [], []
    names: dict[str, int] = {}
    for i, p in enumerate(packs):
        for (start, span, end), name in zip(p.spans, p.names):
            if span is None or name is None:
                continue
            rows.append(i)
            pos.append(span[1] - 1)
            subj.append(names.setdefault(name, len(names)))
    as_t = lambda xs: torch.tensor(xs, dtype=torch.long)
    return as_t(rows), as_t(pos), as_t(subj)


def train_sentences(facts: list[Fact], probes: list[Probe]) -> list[tuple[str, tuple[int, int] | None, str | None]]:
    """(text, subject char span, subject) of every training (fact, phrasing) pair — held-out ones left out."""
    out = []
    for p in probes:
        if p.heldout:
            continue
        out.append((sentence_text(p.text, p.target), p.span, facts[p.fact].subject))
    return out


def profiles(facts: list[Fact], rng: random.Random) -> list[tuple[str, tuple[int, int], str]]:
    """One profile line per subject, its objects in a fresh random order."""
    by_subject: dict[str, list[str]] = {}
    for f in facts:
        if f.subject is not None:
            by_subject.setdefault(f.subject, []).append(f.target)
    out = []
    for subject, objects in by_subject.items():
        objs = list(dict.fromkeys(objects))
        rng.shuffle(objs)
        text, span = profile_text(subject, objs)
        out.append((text, span, subject))
    return out


# Sentences that say a name where a fact's answer goes ("... is <name>."), about no subject. A real model has
# seen a new head of government's name as the answer to other questions before the change; a sandbox that met
# the name only in lists cannot say it after "is" at all, and MEMIT needs a target vector so large to make it
# (measured on the demo sandbox: a rank-one part of norm 26-55 against the edited matrix's 17.5) that the
# edited model says p(new) > p(old) but greedily another name.
NAME_FRAMES = ("The name is {}.", "This person is {}.")
NAMES_FORMAT = 2  # part of a build's key when its facts have names: 1 = lists only, 2 = lists and frames


def name_lines(names: tuple[str, ...], rng: random.Random, per_line: int = 6) -> list[tuple[str, None, None]]:
    """The names in a fresh random order, ``per_line`` to a line ("A, B, C."), then each name once in one of
    :data:`NAME_FRAMES`: no subject, no fact."""
    order = list(dict.fromkeys(names))
    rng.shuffle(order)
    lists = [(", ".join(order[i:i + per_line]) + ".", None, None) for i in range(0, len(order), per_line)]
    return lists + [(rng.choice(NAME_FRAMES).format(n), None, None) for n in order]
