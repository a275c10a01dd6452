"""Scoring a model on (prompt, target) pairs: teacher-forced log-probabilities of the target tokens.

Prompt and target are tokenized together and split by character offsets (:mod:`editing.tokens`), as the
editor sees them. One forward pass per padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import prompt_target_ids


@dataclass(frozen=True)
class TargetScore:
    logprob: float  # log p(target tokens | prompt), summed over the target's tokens
    tokens: int  # number of target tokens
    argmax: bool  # greedy decoding from the prompt produces exactly these tokens first

    @property
    def prob(self) -> float:
        """Whole-sequence probability of the target."""
        import math

        return math.exp(self.logprob)

    @property
    def mean_nll(self) -> float:
        """Mean −log p per target token (what CounterFact's scores compare)."""
        return -self.logprob / self.tokens


@torch.no_grad()
def score_targets(model: nn.Module, tokenizer, prompts: list[str], targets: list[str],
                  batch_size: int = 128) -> list[TargetScore]:
    """Log-probability of each ``targets[i]`` after ``prompts[i]`` (full strings, subject filled in)."""
    items = [prompt_target_ids(tokenizer, p, t) for p, t in zip(prompts, targets)]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    out: list[TargetScore | None] = [None] * len(items)
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            T = max(len(items[i][0]) for i in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), T), dtype=torch.long)
            for r, i in enumerate(chunk):
                seq = items[i][0]
                ids[r, :len(seq)] = torch.tensor(seq)
                att[r, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()  # (B, T, V)
            logp = F.log_softmax(logits, -1)
            for r, i in enumerate(chunk):
                seq, start = items[i]
                tgt = torch.tensor(seq[start:], device=device)  # (t,)
                pos = torch.arange(start - 1, len(seq) - 1, device=device)  # positions predicting them
                lp = logp[r, pos, tgt]
                arg = bool((logp[r, pos].argmax(-1) == tgt).all())
                out[i] = TargetScore(float(lp.sum()), len(tgt), arg)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
