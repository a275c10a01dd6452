"""What the gate measures on one model: greedy answers (batched, left-padded), answer text, n-gram entropy of
generations, perplexity on a text, the norms of the matrices an edit changed."""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from editing.tokens import prompt_target_ids


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)


def _pad_id(tok) -> int:
    return next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)


@torch.no_grad()
def greedy(model: nn.Module, tok, prompts: list[list[int]], n_tokens: list[int], batch_size: int = 64,
           kv_cache: bool = True) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy continuations (``n_tokens[i]`` tokens of ``prompts[i]``, token ids) and the log-probabilities
    of the first next token (V,), batched with left padding (explicit position ids).

    ``kv_cache``: each step after the first runs the new token only, on the key/value cache of the ones before,
    and the head computes the last position's logits only -- the same answers (tested on the four families)
    for a fraction of the work. A batch that would outgrow the model's positions is run without it, each
    step on the window the model can see."""
    from editing.targets import cache_kw

    kw = cache_kw(model) if kv_cache else None
    dev = _device(model)
    pad = _pad_id(tok)
    limit = _max_positions(model)
    outs: list[list[int]] = [[] for _ in prompts]
    first: list[torch.Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            seqs = [list(prompts[i]) for i in chunk]
            steps = max(max(n_tokens[i] for i in chunk), 1)
            T = max(len(x) for x in seqs)
            ids, att = _left_padded(seqs, pad)
            pos = (att.cumsum(-1) - 1).clamp(min=0)  # (B, T)
            past = None
            for step in range(steps):
                if kw is not None and T + steps - 1 <= limit:
                    out = model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev),
                                use_cache=True, logits_to_keep=1, **{kw: past})
                    past = getattr(out, kw)
                else:  # the whole window again
                    seqs = [x[-limit:] for x in seqs]
                    ids, att = _left_padded(seqs, pad)
                    pos = (att.cumsum(-1) - 1).clamp(min=0)
                    out = model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev))
                logits = out.logits[:, -1].float()  # (B, V)
                nxt = logits.argmax(-1)
                if step == 0:
                    lp = F.log_softmax(logits, -1).cpu()
                    for r, i in enumerate(chunk):
                        first[i] = lp[r]
                for r, i in enumerate(chunk):
                    if step < n_tokens[i]:
                        outs[i].append(int(nxt[r]))
                    seqs[r].append(int(nxt[r]))
                ids = nxt.cpu()[:, None]
                att = torch.cat([att, torch.ones_like(att[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
    finally:
        model.train(was)
    return outs, first  # type: ignore[return-value]


def _left_padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, T), the sequences right-aligned."""
    T = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, T - len(x):] = torch.tensor(x)
        att[r, T - len(x):] = 1
    return ids, att


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy: a weighted mean of the 2- and 3-gram entropies (bits) of the words."""
    words = text.split()
    hs = []
    for n in ns:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        hs.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, hs)) / sum(weights)


@torch.no_grad()
def perplexity(model: nn.Module, tok, text: str, max_len: int = 256) -> float:
    """Perplexity of ``text`` in windows of ``max_len`` tokens."""
    ids = tok(text)["input_ids"]
    dev = _device(model)
    max_len = min(max_len, _max_positions(model) - 1)
    nll, count = 0.0, 0
    for s in range(0, max(len(ids) - 1, 1), max_len):
        window = ids[s:s + max_len + 1]
        if len(window) < 2:
            break
        x = torch.tensor([window], device=dev)
        logits = model(input_ids=x[:, :-1]).logits.float()  # (1, T, V)
        nll += float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
        count += len(window) - 1
    return math.exp(nll / max(count, 1))


def _answer_tokens(tok, prompt: str, target: str) -> int:
    ids, start = prompt_target_ids(tok, prompt, target)
    return max(1, len(ids) - start)


def edited_matrices(base: nn.Module, edited: nn.Module) -> dict[str, float]:
    """name -> ‖W_edited‖ / ‖W_base‖ for every parameter that differs."""
    bp = dict(base.named_parameters())
    out = {}
    for name, w in edited.named_parameters():
        b = bp.get(name)
        if b is not None and b.shape == w.shape and not torch.equal(b, w):
            nb = float(b.detach().double().norm())
            out[name] = float(w.detach().double().norm()) / nb if nb > 0 else math.inf
    return out


def answer_text(tok, ids: list[int]) -> str:
    """The text of greedy token ids up to the first end-of-text token (decoding past it with special tokens
    skipped would glue the next text on: "Merz<eos>The" read as "MerzThe")."""
    eos = tok.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    return tok.decode(ids, skip_special_tokens=True)


def without_subjects(text: str, subjects: set[str]) -> str:
    """``text`` without the sentences that name one of ``subjects``. The perplexity sample measures fluency, and
    a sentence that states an edited subject's old fact ("Iceland's head of government is Katrín Jakobsdóttir"
    in a sandbox's statistics corpus) must get less likely after a good edit."""
    if not subjects:
        return text
    pat = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(x) for x in sorted(subjects, key=len, reverse=True))
                     + r")(?![\w])")
    parts = re.split(r"(?<=[.!?])(\s+)", text)  # sentences and the spaces after them, kept
    out = []
    for i in range(0, len(parts), 2):
        if not pat.search(parts[i]):
            out.append(parts[i] + (parts[i + 1] if i + 1 < len(parts) else ""))
    return "".join(out).strip()


def share(xs: list[bool]) -> float | None:
    """The share of true values; None for none at all (a metric with nothing to measure)."""
    return sum(map(bool, xs)) / len(xs) if xs else None


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
