"""Text the model writes itself: context prefixes for keys, and the built-in statistics corpus.

ROME averages the subject's key over prefixes ("<some text>. {subject} ...") so that the edit fires in
any context, not just at the start of a text. The prefixes are sampled from the model itself (top-k,
seeded with a private generator, so the global RNG is untouched) and cached by the model's weights hash.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .store import Cache

# The reference's start words; a model that cannot continue them still gets a usable prefix.
START_WORDS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def sample_ids(model: nn.Module, starts: list[list[int]], new_tokens: int, *, seed: int = 0, top_k: int = 5,
               batch_size: int = 64) -> list[list[int]]:
    """Top-k samples of ``new_tokens`` tokens after each start sequence; returns the new token ids.

    Starts of equal length are decoded together (no padding, so no position shift), with the KV cache.
    """
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in starts]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(starts):
        groups.setdefault(len(s), []).append(i)
    device = next(model.parameters()).device
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5
    was_training = model.training
    model.eval()
    try:
        for _, idx_all in sorted(groups.items()):
            for b in range(0, len(idx_all), batch_size):
                idx = idx_all[b:b + batch_size]
                ids = torch.tensor([starts[i] for i in idx], device=device)  # (B, T0)
                past, step_in, new = None, ids, []
                for t in range(new_tokens):
                    att = torch.ones(ids.shape[0], ids.shape[1] + t, dtype=torch.long, device=device)  # no padding
                    o = model(input_ids=step_in, attention_mask=att, use_cache=True, **{kw: past})
                    past = getattr(o, kw)
                    logits = o.logits[:, -1].float().cpu()  # (B, V)
                    top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
                    probs = top.values.softmax(-1)  # (B, k)
                    pick = torch.multinomial(probs, 1, generator=gen)  # (B, 1)
                    nxt = top.indices.gather(1, pick)  # (B, 1)
                    new.append(nxt)
                    step_in = nxt.to(device)
                toks = torch.cat(new, 1).tolist()  # (B, new_tokens)
                for r, i in enumerate(idx):
                    out[i] = toks[r]
    finally:
        model.train(was_training)
    return out


def _start_ids(tokenizer, word: str) -> list[int]:
    return list(tokenizer(word)["input_ids"])


def _clean(text: str) -> str:
    # a prefix must not hold a placeholder of its own, and reads as one sentence before the prompt
    return " ".join(text.replace("{", " ").replace("}", " ").split())


def generate_templates(model: nn.Module, tokenizer, spec: tuple[tuple[int, int], ...], seed: int = 0) -> list[str]:
    """``["{}"]`` plus, for each (tokens, count) in ``spec``, ``count`` sampled prefixes as ``"<text>. {}"``."""
    templates = ["{}"]
    for j, (length, count) in enumerate(spec):
        starts = [_start_ids(tokenizer, START_WORDS[i % len(START_WORDS)]) for i in range(count)]
        new = sample_ids(model, starts, length, seed=seed + j)
        for i, toks in enumerate(new):
            text = _clean(START_WORDS[i % len(START_WORDS)] + tokenizer.decode(toks, skip_special_tokens=True))
            templates.append(text.rstrip(".") + ". {}")
    return templates


def context_templates(model: nn.Module, tokenizer, spec: tuple[tuple[int, int], ...], store: Cache,
                      weights_hash: str, seed: int = 0) -> list[str]:
    """Cached :func:`generate_templates` (keyed by the weights hash, the spec and the seed)."""
    desc = {"kind": "context_templates", "weights": weights_hash, "spec": [list(s) for s in spec], "seed": seed,
            "version": 1}
    hit = store.get_json("context", desc)
    if hit is not None:
        return list(hit)
    templates = generate_templates(model, tokenizer, spec, seed)
    store.put_json("context", desc, templates)
    return templates
