"""Token positions an edit needs: the subject's last token, and where the target starts.

Everything is found by tokenizing the whole text once and reading character offsets, never by counting
the tokens of pieces: a tokenizer that adds a BOS (Llama, stories260K) shifts every piece-counted position
by one, and the reference editors then edit the token after the subject silently (../shared/FINDINGS.md).
"""

from __future__ import annotations


class TokenizationError(ValueError):
    """A subject or target cannot be located in the tokenized text."""


def fill(template: str, subject: str) -> tuple[str, int, int]:
    """``template`` with ``{}`` replaced by ``subject``, and the subject's character span ``[start, end)``."""
    if template.count("{}") != 1:
        raise TokenizationError(f"template must contain exactly one '{{}}': {template!r}")
    start = template.index("{}")
    return template.replace("{}", subject, 1), start, start + len(subject)


def span_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap ``[start, end)`` (special tokens have none)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def subject_last_token(tokenizer, template: str, subject: str) -> tuple[list[int], int]:
    """Token ids of the filled prompt (with any special tokens the tokenizer adds) and the index of the
    subject's last token."""
    text, start, end = fill(template, subject)
    enc = tokenizer(text, return_offsets_mapping=True)
    hits = span_tokens(enc["offset_mapping"], start, end)
    if not hits:
        raise TokenizationError(f"subject {subject!r} not found among the tokens of {text!r}")
    return list(enc["input_ids"]), hits[-1]


def joined(prompt: str, target: str) -> tuple[str, int]:
    """Prompt and target as one text, and where the target starts. A space joins them unless one side
    already has it (a target given as " Paris" must not become "  Paris")."""
    if prompt.endswith((" ", "\n")) or target.startswith((" ", "\n")):
        return prompt + target, len(prompt)
    return f"{prompt} {target}", len(prompt) + 1


def prompt_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of prompt + target tokenized together, and the number of tokens before the target.

    The split is by character offsets at the end of the prompt's text: the joining space, alone or in a
    token with the target's first characters, belongs to the target (the model has to predict it).
    """
    text, _ = joined(prompt, target)
    boundary = len(prompt.rstrip())
    enc = tokenizer(text, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    first = next((i for i, (a, b) in enumerate(offs) if b > a and b > boundary), None)
    if first is None or first == len(offs):
        raise TokenizationError(f"target {target!r} produced no tokens after {prompt!r}")
    return list(enc["input_ids"]), first


def encode_edit(tokenizer, template: str, subject: str, target: str | None = None) -> tuple[list[int], int, int]:
    """One tokenization of ``template`` filled with ``subject`` (and followed by ``target``, if given):
    (token ids, index of the subject's last token, index of the first target token — ``len(ids)`` without
    a target). Positions come from character offsets of this one tokenization."""
    text, s0, s1 = fill(template, subject)
    if target is None:
        enc = tokenizer(text, return_offsets_mapping=True)
        hits = span_tokens(enc["offset_mapping"], s0, s1)
        if not hits:
            raise TokenizationError(f"subject {subject!r} not found among the tokens of {text!r}")
        return list(enc["input_ids"]), hits[-1], len(enc["input_ids"])
    full, _ = joined(text, target)
    boundary = len(text.rstrip())
    enc = tokenizer(full, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    hits = span_tokens(offs, s0, s1)
    if not hits:
        raise TokenizationError(f"subject {subject!r} not found among the tokens of {full!r}")
    first = next((i for i, (a, b) in enumerate(offs) if b > a and b > boundary), None)
    if first is None:
        raise TokenizationError(f"target {target!r} produced no tokens after {text!r}")
    if hits[-1] >= first:
        raise TokenizationError(f"subject {subject!r} runs into the target {target!r} in {full!r}")
    return list(enc["input_ids"]), hits[-1], first
