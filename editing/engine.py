"""One entry point for every method of :mod:`editing.methods`: :func:`compute_edit` (requests → delta; the
model is untouched).

    model, tok = load_model(dir)
    hp = hparams.default("memit", "sandbox")
    result = compute_edit(model, tok, requests, hp, Cache(home / "cache"))
    applied = delta.apply(model, result.delta)       # and applied.revert() undoes it exactly

The delta's metadata records what produced it: requests, hparams, base weights hash, statistics corpus,
timings per phase. Context prefixes and covariance statistics come from the injected :class:`Cache`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import delta as D
from . import methods
from .arch import spec_for
from .context import context_templates
from .hparams import Hparams, to_dict
from .methods.base import Event, Inputs
from .requests import EditRequest, check_distinct
from .stats import BUILTIN, Corpus, builtin_corpus, file_corpus, second_moments
from .store import Cache

log = logging.getLogger(__name__)

# on_event(phase, detail): progress for a CLI. Phases, in order: "templates" {}, "stats" {layers},
# "stats_progress" {done, total} (only when statistics are computed), "targets" {requests}, then the method's
# own events (editing.methods.Method.events).


@dataclass
class EditResult:
    delta: D.Delta
    timings: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    state: Any = None  # the method's state after this edit (stateful methods; pass it to the next edit)


def stats_corpus(model: nn.Module, tokenizer, hp: Hparams, store: Cache, files: list[Path] | None = None,
                 weights_hash: str | None = None) -> Corpus:
    """The statistics corpus: ``files`` if given, else the built-in model samples (cached by weights hash)."""
    if files:
        limit = hp.stats.mom2_samples
        max_len = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
        return file_corpus(files, tokenizer, max_len, limit=limit)
    wh = weights_hash or D.weights_sha256(model)
    desc = {"kind": BUILTIN, "weights": wh, "samples": hp.stats.mom2_samples, "tokens": hp.stats.sample_tokens,
            "seed": 0, "version": 1}
    hit = store.get_json("corpus", desc)
    if hit is not None:
        return Corpus(BUILTIN, hit["sequences"], hit["sha256"])
    c = builtin_corpus(model, tokenizer, hp.stats.mom2_samples, hp.stats.sample_tokens)
    store.put_json("corpus", desc, {"sequences": c.sequences, "sha256": c.sha256})
    return c


def edit_layers(hp: Hparams) -> list[int]:
    return methods.of(hp).layers(hp)


def compute_edit(model: nn.Module, tokenizer, requests: list[EditRequest], hp: Hparams, store: Cache,
                 corpus_files: list[Path] | None = None, on_event: Event | None = None,
                 state: Any = None, released: list[EditRequest] | None = None) -> EditResult:
    """Compute the delta of ``requests`` with ``hp``'s method. ``model`` is the same, bit for bit, on return.

    ``state``: what a stateful method carried out of the edit that produced ``model`` (None at the first);
    ``released``: the edits in effect that this batch replaces (the last applied edit of each subject it edits
    again), whose keys a stateful method stops preserving."""
    if not requests:
        raise ValueError("no requests to edit")
    method = methods.of(hp)
    if method.distinct_keys:
        check_distinct(requests)  # before any expensive work
    emit = on_event or (lambda phase, detail: None)
    spec = spec_for(model)
    layers = method.layers(hp)
    n_layers = len(model.get_submodule(spec.layers))
    bad = [x for x in layers if x >= n_layers]
    if bad:
        raise ValueError(f"hparams 'layer(s)': {bad} out of range for a {n_layers}-layer {spec.family} model")
    t_all = time.perf_counter()
    base_hash = D.weights_sha256(model)

    t0 = time.perf_counter()
    emit("templates", {})
    templates = context_templates(model, tokenizer, hp.target.context_templates, store, base_hash)
    t_templates = time.perf_counter() - t0

    t0 = time.perf_counter()
    emit("stats", {"layers": layers})
    corpus = None
    covs: dict[int, torch.Tensor] = {}
    if method.needs_stats(hp):
        corpus = stats_corpus(model, tokenizer, hp, store, corpus_files, base_hash)
        covs = second_moments(model, layers, corpus, store, hp.stats.mom2_dtype,
                              progress=lambda a, b: emit("stats_progress", {"done": a, "total": b}))
    t_stats = time.perf_counter() - t0

    emit("targets", {"requests": len(requests)})
    out = method.compute(Inputs(model, tokenizer, requests, hp, templates, covs, emit, state, store,
                                 list(released or ())))
    delta = out.delta
    timings = {"templates": t_templates, "stats": t_stats, **out.timings}
    timings["total"] = time.perf_counter() - t_all
    timings = {k: round(v, 4) for k, v in timings.items()}
    delta.meta = {
        "method": hp.method,
        "family": spec.family,
        "hparams": to_dict(hp),
        "requests": [r.to_json() for r in requests],
        "base_weights_sha256": base_hash,
        "stats_corpus": None if corpus is None else {"name": corpus.name, "sha256": corpus.sha256, "tokens": corpus.tokens},
        "context_templates": out.details.get("context_templates", templates),  # a method may keep its own
        "timings": timings,
    }
    return EditResult(delta, timings, out.details, out.state)
