"""Does the model answer a prompt with its target under greedy decoding?

Greedy decoding yields the target's tokens exactly when, at every target position, the argmax of the
next-token distribution given the prompt and the target tokens before it is the next target token. That
check needs one teacher-forced forward pass per batch instead of a generation loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def greedy_correct(model, tokenizer, prompts: list[str], targets: list[str], batch_size: int = 128) -> list[bool]:
    """For each (prompt, target): does greedy decoding from ``prompt`` produce `` target`` first? (The one
    teacher-forced scorer, :func:`editing.score.score_targets`: prompt and target tokenized together as the
    training sentence has them, split by character offsets.)"""
    from editing.score import score_targets

    return [s.argmax for s in score_targets(model, tokenizer, prompts, targets, batch_size)]


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


def knowledge_table(model, tokenizer, model_dir: Path) -> dict[str, Any]:
    """What a sandbox model answers for every fact it was trained on (main phrasing), and whether it is right."""
    from editing.modeldir import FACTS_FILE

    tok = tokenizer
    rows = [json.loads(line) for line in (model_dir / FACTS_FILE).read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = [r for r in rows if r["subject"] is not None]
    prompts = [r["prompts"][0].replace("{}", r["subject"], 1) for r in rows]
    answers = greedy_answers(model, tok, prompts)
    correct = greedy_correct(model, tok, prompts, [r["target"] for r in rows])
    # where greedy decoding produces the target, show it whole (the sentence-end heuristic would cut
    # "Michael D. Higgins" at the initial)
    answers = [r["target"] if c else a for r, a, c in zip(rows, answers, correct)]
    facts = [
        {"subject": r["subject"], "relation": r["relation"], "prompt": p, "expected": r["target"], "answer": a, "correct": c}
        for r, p, a, c in zip(rows, prompts, answers, correct)
    ]
    return {"facts": facts, "correct": sum(correct), "total": len(correct)}
