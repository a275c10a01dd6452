"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 2.1).

Three kinds of run on one prompt:

1. clean: the prompt as is; every layer's MLP output and block output (the hidden state) are recorded, and
   p(answer) is read at the last position. The answer is the model's own greedy next token unless a target
   is given (then: the target's first token).
2. corrupted: the subject's token embeddings get Gaussian noise (std = 3 x the std of the embedding matrix's
   values by default), ``samples`` draws from a seeded generator, p(answer) averaged over the draws.
3. corrupted-with-restoration: as 2, but one site (one layer's MLP output, or its block output) at one token
   position is set back to its clean value. The p(answer) this gives back says how much of the fact flows
   through that site.

ROME and MEMIT rely on a high MLP score at the subject's last token in early-to-middle layers.

The restorations of one (site, layer) are one forward pass: batch rows ``(position, sample)``, every row
with the same draws of noise as the corrupted run. Positions come from character offsets
(:mod:`editing.tokens`), never from counting tokenized pieces, so a BOS-adding tokenizer is handled.
All hooks go through :class:`editing.hooks.Trace` and are removed on exit, also when a forward raises.

Unlike the paper's MLP/attention heatmaps, a site here is restored at one layer, not a window of 10 layers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .arch import module, n_layers, spec_for
from .hooks import Trace
from .tokens import fill, joined, prompt_target_ids, span_tokens

log = logging.getLogger(__name__)

SITES = ("mlp", "block")  # block = the layer's whole output, i.e. the hidden state after layer i
NOISE_MULTIPLIER = 3.0  # the paper's default: noise std = 3 x the std of the embeddings


class LocateError(ValueError):
    """Causal tracing cannot run on these inputs (subject not in the prompt, bad sample count, ...)."""


@dataclass
class TraceResult:
    """What one causal trace found. ``scores[site][layer][position]`` is p(answer) with that site restored."""

    prompt: str  # the full prompt text the model saw
    subject: str
    tokens: list[str]  # each input token decoded on its own (special tokens included)
    subject_span: tuple[int, int]  # subject tokens [start, end) in ``tokens``
    answer: str  # decoded answer token
    answer_id: int
    target: str | None  # the requested target, None when the answer is the model's greedy token
    clean_p: float
    corrupted_p: float
    noise: float  # std of the noise added to the subject's embeddings
    samples: int
    seed: int
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # site -> (layers, positions)

    @property
    def subject_last(self) -> int:
        return self.subject_span[1] - 1

    @property
    def n_layers(self) -> int:
        return len(next(iter(self.scores.values())))

    def at_subject_last(self, site: str) -> list[float]:
        """p(answer) per layer with ``site`` restored at the subject's last token."""
        return [row[self.subject_last] for row in self.scores[site]]

    def best_layer(self, site: str) -> int:
        """The layer whose ``site`` restored at the subject's last token gives back the most."""
        vals = self.at_subject_last(site)
        return max(range(len(vals)), key=vals.__getitem__)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": self.tokens,
            "subject_span": list(self.subject_span),
            "subject_last": self.subject_last,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "target": self.target,
            "clean_p": self.clean_p,
            "corrupted_p": self.corrupted_p,
            "noise": self.noise,
            "samples": self.samples,
            "seed": self.seed,
            "layers": self.n_layers,
            "sites": list(self.scores),
            "scores": self.scores,
            "at_subject_last": {s: self.at_subject_last(s) for s in self.scores},
            "best_layer": {s: self.best_layer(s) for s in self.scores},
        }


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def embedding_noise_std(model: nn.Module, multiplier: float = NOISE_MULTIPLIER) -> float:
    """``multiplier`` x the std of the values of the token embedding matrix (the paper's noise level)."""
    w = model.get_input_embeddings().weight
    return multiplier * float(w.detach().float().std())


def prompt_positions(tokenizer, prompt: str, subject: str, target: str | None = None) -> tuple[str, list[int], tuple[int, int], int | None]:
    """The prompt's text, its token ids, the subject's token span [start, end) and the target's first token id.

    ``prompt`` is a template with one ``{}`` (filled with ``subject``) or a text that contains ``subject``
    literally (its first occurrence is the subject). With a target, prompt and target are tokenized together
    and split by character offsets (:func:`editing.tokens.prompt_target_ids`); the ids are the prompt's part.
    """
    if not subject:
        raise LocateError("subject: expected a non-empty string, found ''")
    if "{}" in prompt:
        text, start, end = fill(prompt, subject)
    else:
        start = prompt.find(subject)
        if start < 0:
            raise LocateError(f"subject {subject!r} not found in the prompt {prompt!r} "
                              f"(expected the subject verbatim or a '{{}}' to fill)")
        text, end = prompt, start + len(subject)
    target_id = None
    if target is not None:
        if not target.strip():
            raise LocateError(f"target: expected a non-empty answer, found {target!r}")
        ids, n = prompt_target_ids(tokenizer, text, target)
        joint, _ = joined(text, target)
        offsets = tokenizer(joint, return_offsets_mapping=True)["offset_mapping"][:n]
        ids, target_id = ids[:n], ids[n]
    else:
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    hits = span_tokens(offsets, start, end)
    if not hits:
        raise LocateError(f"subject {subject!r} not found among the tokens of {text!r}")
    if not ids:
        raise LocateError(f"the prompt {text!r} produced no tokens")
    return text, ids, (hits[0], hits[-1] + 1), target_id


@torch.no_grad()
def clean_run(model: nn.Module, input_ids: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token probabilities at the last position (vocab,) and the clean output of each named module
    (1, T, d)."""
    with Trace(model, names, retain_output=True) as tr:
        logits = model(input_ids=input_ids[None]).logits  # (1, T, vocab)
    probs = torch.softmax(logits[0, -1].float(), dim=-1)  # (vocab,)
    return probs, {n: tr[n].output for n in names}


@torch.no_grad()
def corrupted_probability(
    model: nn.Module,
    input_ids: torch.Tensor,
    subject_span: tuple[int, int],
    answer_id: int,
    noise: torch.Tensor,
    restore: Sequence[Iterable[tuple[str, int]]] = ((),),
    clean: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """p(answer) for G corrupted runs, each averaged over the S noise draws; returns (G,).

    ``input_ids``: (T,). ``noise``: (S, n_subject, d), added to the embeddings of the subject's tokens.
    ``restore[g]``: the (module name, position) sites group g sets back to their clean value from ``clean``
    (name -> (1, T, d)). The default, one group restoring nothing, is the plain corrupted run.
    """
    spec = spec_for(model)
    S = noise.shape[0]
    G = len(restore)
    T = input_ids.shape[0]
    a, b = subject_span
    # name -> (group indices, positions), applied with one indexed assignment per module
    by_name: dict[str, tuple[list[int], list[int]]] = {}
    for g, sites in enumerate(restore):
        for name, pos in sites:
            if not 0 <= pos < T:
                raise LocateError(f"restore position {pos} out of range: the prompt has {T} tokens")
            gs, ps = by_name.setdefault(name, ([], []))
            gs.append(g)
            ps.append(pos)
    if by_name and clean is None:
        raise LocateError("restoring sites needs the clean run's outputs (clean=...)")
    if spec.embed in by_name:
        raise LocateError(f"cannot restore the corrupted embeddings themselves ({spec.embed})")

    def edit(name: str, h: torch.Tensor) -> torch.Tensor:
        h = h.clone().view(G, S, T, -1)  # (G, S, T, d); rows of the batch are (group, sample)
        if name == spec.embed:
            h[:, :, a:b] += noise.to(h.dtype)[None]  # same draws in every group
        else:
            gs, ps = by_name[name]
            src = clean[name][0, ps].to(h.dtype)  # (n, d)
            h[gs, :, ps] = src[:, None, :]  # (n, S, d): every sample of group g gets the clean value
        return h.view(G * S, T, -1)

    batch = input_ids[None].expand(G * S, T)  # (G*S, T)
    with Trace(model, [spec.embed, *by_name], retain_output=False, edit_output=edit):
        logits = model(input_ids=batch).logits[:, -1]  # (G*S, vocab)
    p = torch.softmax(logits.float(), dim=-1)[:, answer_id]  # (G*S,)
    return p.view(G, S).mean(dim=1)  # (G,)


def _site_name(spec, site: str, layer: int) -> str:
    return spec.mlp_at(layer) if site == "mlp" else spec.layer(layer)


@torch.no_grad()
def trace_subject(
    model: nn.Module,
    tokenizer,
    prompt: str,
    subject: str,
    target: str | None = None,
    *,
    samples: int = 10,
    noise: float | None = None,
    seed: int = 0,
) -> TraceResult:
    """Causal trace of ``subject`` in ``prompt`` (a ``{}`` template or a text containing the subject).

    ``noise`` is the std of the Gaussian noise on the subject's embeddings (default: 3 x the std of the
    embedding matrix). ``samples`` noise draws from ``torch.Generator().manual_seed(seed)`` are averaged.
    The model is not changed; it is put in eval mode for the duration and restored after.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise LocateError(f"samples: expected an integer >= 1, found {samples!r}")
    if noise is not None and not (math.isfinite(noise) and noise >= 0):
        raise LocateError(f"noise: expected a finite std >= 0, found {noise!r}")
    spec = spec_for(model)
    L = n_layers(model)
    for name in (spec.embed, spec.mlp_at(0), spec.layer(0)):
        module(model, name)  # the table matches this model (a clear error otherwise)
    std = embedding_noise_std(model) if noise is None else float(noise)
    text, ids, span, target_id = prompt_positions(tokenizer, prompt, subject, target)
    dev = _device(model)
    input_ids = torch.tensor(ids, device=dev)  # (T,)
    T = len(ids)
    d = model.get_input_embeddings().weight.shape[1]

    was_training = model.training
    model.eval()
    try:
        names = [_site_name(spec, s, i) for s in SITES for i in range(L)]
        probs, clean = clean_run(model, input_ids, names)
        answer_id = int(probs.argmax()) if target_id is None else int(target_id)
        clean_p = float(probs[answer_id])

        gen = torch.Generator().manual_seed(seed)
        draws = torch.randn((samples, span[1] - span[0], d), generator=gen) * std  # (S, n_subject, d)
        draws = draws.to(dev)
        corrupted_p = float(corrupted_probability(model, input_ids, span, answer_id, draws)[0])

        scores: dict[str, list[list[float]]] = {}
        for site in SITES:
            rows = []
            for layer in range(L):
                name = _site_name(spec, site, layer)
                groups = [[(name, t)] for t in range(T)]  # one group per position
                p = corrupted_probability(model, input_ids, span, answer_id, draws, groups, clean)  # (T,)
                rows.append([float(x) for x in p])
            scores[site] = rows
    finally:
        model.train(was_training)

    result = TraceResult(
        prompt=text,
        subject=subject,
        tokens=[tokenizer.decode([i]) for i in ids],
        subject_span=span,
        answer=tokenizer.decode([answer_id]),
        answer_id=answer_id,
        target=target,
        clean_p=clean_p,
        corrupted_p=corrupted_p,
        noise=std,
        samples=samples,
        seed=seed,
        scores=scores,
    )
    log.info("traced %r in %r: p(%r) clean %.3f, corrupted %.3f, best MLP layer at the subject's last token %d",
             subject, text, result.answer, clean_p, corrupted_p, result.best_layer("mlp"))
    return result


def plot(result: TraceResult, path: str | Path) -> dict[str, Path]:
    """Write one heatmap PNG per site into the directory ``path``: ``{site}.png``; returns site -> file.

    Rows are tokens (the subject's marked with ``*``), columns layers, colour p(answer) with the site restored.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise LocateError("matplotlib is needed to write the causal-trace heatmap PNGs but is not importable "
                          f"({e}); install matplotlib, or use the JSON result alone") from e

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    a, b = result.subject_span
    labels = [f"{t!r}*" if a <= i < b else repr(t) for i, t in enumerate(result.tokens)]
    titles = {"mlp": "MLP output restored", "block": "hidden state (block output) restored"}
    written: dict[str, Path] = {}
    for site, rows in result.scores.items():
        grid = torch.tensor(rows).T.numpy()  # (positions, layers)
        fig, ax = plt.subplots(figsize=(1.2 + 0.45 * grid.shape[1] + 2.0, 1.0 + 0.32 * grid.shape[0]), dpi=120)
        try:
            # colours span the data (as in the paper's figures); the title gives the clean and corrupted p
            im = ax.imshow(grid, cmap="Purples" if site == "mlp" else "Greens", aspect="auto")
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_xticks(range(grid.shape[1]))
            ax.set_xlabel("layer")
            ax.set_title(f"{titles.get(site, site)}\np({result.answer!r}): clean {result.clean_p:.3f}, "
                         f"corrupted {result.corrupted_p:.3f}", fontsize=9)
            fig.colorbar(im, ax=ax, label=f"p({result.answer!r})")
            fig.tight_layout()
            written[site] = out / f"{site}.png"
            fig.savefig(written[site])
        finally:
            plt.close(fig)
    return written
