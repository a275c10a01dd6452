"""Greedy completion of one prompt, as a deployed model answers: the KV cache, the end-of-text token and stop
strings. Used by the model server and the MLflow pyfunc of every registered version."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def greedy_complete(model: nn.Module, tokenizer, prompt: str, max_tokens: int,
                    stop: list[str] | tuple[str, ...] = ()) -> tuple[str, str, int, int]:
    """Greedy continuation of ``prompt``: (text, finish_reason, prompt tokens, completion tokens). The text ends
    before the first ``stop`` string ("stop"), at the end-of-text token ("stop") or after ``max_tokens`` tokens,
    or at the model's context length ("length")."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    n = min(max_tokens, max(0, limit - ids.shape[1])) if limit else max_tokens
    eos = tokenizer.eos_token_id
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5
    new: list[int] = []
    reason = "length"
    with torch.no_grad():
        past, step = None, ids
        for _ in range(n):
            out = model(input_ids=step, use_cache=True, **{kw: past})
            past = getattr(out, kw)
            nxt = int(out.logits[0, -1].argmax())
            if eos is not None and nxt == eos:
                reason = "stop"
                break
            new.append(nxt)
            step = ids.new_tensor([[nxt]])
            if stop and any(s in tokenizer.decode(new) for s in stop):
                break
    text = tokenizer.decode(new)
    cut = min((text.index(s) for s in stop if s in text), default=None)
    if cut is not None:
        text, reason = text[:cut], "stop"
    return text, reason, int(ids.shape[1]), len(new)
