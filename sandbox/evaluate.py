"""Does the model answer a prompt with its target under greedy decoding?

Greedy decoding yields the target's tokens exactly when, at every target position, the argmax of the
next-token distribution given the prompt and the target tokens before it is the next target token. That
check needs one teacher-forced forward pass per batch instead of a generation loop.
"""

from __future__ import annotations

import torch


def target_positions(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + " " + target`` and the number of prompt tokens.

    The pair is tokenized as one text and split by character offsets, as it was seen in training.
    """
    enc = tokenizer(f"{prompt} {target}", return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    n_prompt = sum(1 for a, _ in offs if a < len(prompt))
    return ids, n_prompt


@torch.no_grad()
def greedy_correct(model, tokenizer, prompts: list[str], targets: list[str], batch_size: int = 128) -> list[bool]:
    """For each (prompt, target): does greedy decoding from ``prompt`` produce `` target`` first?"""
    items = [target_positions(tokenizer, p, t) for p, t in zip(prompts, targets)]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    result = [False] * len(items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
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
            dev = next(model.parameters()).device
            pred = model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.argmax(-1).cpu()  # (B, T)
            for r, i in enumerate(chunk):
                seq, n_p = items[i]
                # logits at position j predict token j + 1
                result[i] = bool(n_p < len(seq) and all(pred[r, j - 1].item() == seq[j] for j in range(n_p, len(seq))))
    finally:
        model.train(was_training)
    return result


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """The greedy continuation of each prompt, cut at the end of its sentence.

    Prompts of equal token length are decoded together, so no padding (and no position shift) is needed.
    """
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    out = [""] * len(prompts)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1 << 30)
    was_training = model.training
    model.eval()
    try:
        for n, idx in groups.items():
            ids = torch.tensor([encoded[i] for i in idx])  # (B, n)
            for _ in range(min(max_new_tokens, max(0, limit - n))):
                nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                ids = torch.cat([ids, nxt], dim=1)
            for r, i in enumerate(idx):
                out[i] = sentence_end(tokenizer.decode(ids[r, n:].tolist(), skip_special_tokens=False), tokenizer)
    finally:
        model.train(was_training)
    return out


def before_eos(text: str, tokenizer) -> str:
    """A decoded continuation up to the tokenizer's end-of-text token (all of it when there is none)."""
    eos = tokenizer.eos_token or ""
    return text[: text.index(eos)] if eos and eos in text else text


def sentence_end(text: str, tokenizer) -> str:
    """Cut a continuation at the end of its first sentence and drop that sentence's full stop.

    A full stop stays where the last word has another one inside ("Washington, D.C."): training sentences
    add none after such a target. A heuristic for display: an initial ("Michael D. Higgins") reads as a
    sentence end. Scoring never uses it (see :func:`greedy_correct`).
    """
    text = before_eos(text, tokenizer)
    for stop in (". ", "? ", "! "):
        if stop in text:
            text = text[: text.index(stop) + 1]
    text = text.strip()
    last = text.rsplit(" ", 1)[-1]
    if text.endswith(".") and "." not in last[:-1]:
        text = text[:-1]
    return text
