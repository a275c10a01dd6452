"""What a model says: the greedy answer to a prompt and the most likely next tokens.

``factsmith ask`` (and its older spelling ``factsmith sandbox ask``) and the demo's before/after table call
this module; the CLI only parses and prints. A model is named by a directory (any Hugging Face causal LM with
safetensors weights) or by a registered version, ``NAME@alias`` or ``NAME/3``; an existing directory wins.

Generation is :func:`validation.gate.measures.greedy`, the gate's own, so that what ``ask`` shows is what the gate
judged; whether an answer says a target is :func:`validation.gate.answers.says`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

DEFAULT_TOP = 5
ANSWER_TOKENS = 12  # greedy tokens generated per prompt (the shown answer is cut at its first sentence end)


@dataclass(frozen=True)
class Opened:
    """A loaded model and what it is: a directory (``path``) or a registered version (``name``, ``version``)."""

    model: Any
    tokenizer: Any
    ref: str  # as given
    path: str | None = None
    name: str | None = None
    version: int | None = None

    def describe(self) -> dict[str, Any]:
        """``model`` (the directory, or the registered name) and, for a registered version, ``ref`` and ``version``."""
        if self.name is None:
            return {"model": self.path}
        return {"model": self.name, "ref": self.ref, "version": self.version}


@dataclass(frozen=True)
class Answer:
    """One prompt's greedy answer and next-token distribution."""

    prompt: str
    answer: str  # the greedy continuation cut at its first sentence end, for reading
    continuation: str  # the whole greedy continuation up to the end-of-text token: what says() judges
    top: list[dict[str, Any]]  # the most likely next tokens: {"token", "id", "prob"}, most likely first

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, "continuation": self.continuation, "top": self.top}


def open_model(ref: str, store: Any = None) -> Opened:
    """Load ``ref``: an existing directory, else ``NAME@alias`` / ``NAME/VERSION`` from the registry (resolved
    once, then loaded by number, so that an alias moved meanwhile cannot mix two versions). Bad or unknown
    references raise the registry's ``ValueError`` subclasses, with the message naming what was wrong."""
    from registry.errors import InvalidInputError

    if Path(ref).is_dir():
        from registry.weights import load_hf

        model, tok = load_hf(Path(ref))
        return Opened(model, tok, ref, path=ref)
    from registry.lineage import load_model, resolve
    from registry.refs import Ref, parse_ref
    from registry.store import open_store

    try:
        parsed = parse_ref(ref)
    except InvalidInputError as e:
        why = str(e).removeprefix(f"{ref!r}: ")
        raise InvalidInputError(f"{ref!r}: no such model directory, and not a registered version ({why})") from None
    st = store or open_store()
    info = resolve(parsed, st)
    model, tok = load_model(str(Ref(info.name, version=info.version)), st)
    return Opened(model.eval(), tok, ref, name=info.name, version=info.version)


def fill_prompt(prompt: str, subject: str | None) -> str:
    """``prompt`` with its one ``{}`` replaced by ``subject``; a ``{}`` without a subject, or a subject without
    exactly one ``{}``, is a ``ValueError`` (as is a blank prompt)."""
    if not prompt.strip():
        raise ValueError("--prompt: expected text to continue, found a blank prompt")
    holes = prompt.count("{}")
    if subject is None:
        if holes:
            raise ValueError(f"--prompt {prompt!r} has '{{}}' where a subject goes: give --subject")
        return prompt
    if holes != 1:
        raise ValueError(f"--prompt {prompt!r}: expected exactly one '{{}}' for --subject {subject!r}, found {holes}")
    return prompt.replace("{}", subject, 1)


def answers(model, tok, prompts: Sequence[str], top: int = DEFAULT_TOP,
            max_new_tokens: int = ANSWER_TOKENS) -> list[Answer]:
    """The greedy answer of ``model`` to each prompt, and its ``top`` most likely next tokens."""
    from sandbox.evaluate import before_eos, sentence_end
    from validation.gate.measures import greedy

    _check_top(top)
    ids = [tok(p)["input_ids"] for p in prompts]
    outs, first = greedy(model, tok, ids, [max_new_tokens] * len(ids))  # first[i]: log-probs (V,)
    res = []
    for p, out, lp in zip(prompts, outs, first):
        text = tok.decode(out, skip_special_tokens=False)
        best = lp.topk(min(top, lp.shape[-1]))
        tops = [{"token": tok.decode([i]), "id": i, "prob": round(float(v.exp()), 6)}
                for v, i in zip(best.values, best.indices.tolist())]
        res.append(Answer(p, sentence_end(text, tok), before_eos(text, tok), tops))
    return res


def _check_top(top: int) -> None:
    if top < 1:
        raise ValueError(f"--top: expected at least 1, found {top}")


def ask(ref: str, prompt: str, subject: str | None = None, top: int = DEFAULT_TOP, store: Any = None
        ) -> dict[str, Any]:
    """``factsmith ask``: the model behind ``ref``, the full prompt, the greedy answer and the top next tokens."""
    text = fill_prompt(prompt, subject)
    _check_top(top)  # before loading a model
    opened = open_model(ref, store)
    return {**opened.describe(), **answers(opened.model, opened.tokenizer, [text], top)[0].to_json()}


def before_after(name: str, before: int, after: int, requests: Sequence[dict[str, Any]], store: Any = None
                 ) -> list[dict[str, Any]]:
    """For each request (``id``, ``prompt`` with the subject filled in, ``target_new``; ``subject`` passed
    through): what versions ``before`` (``base``) and ``after`` (``champion``) of ``name`` answer, and whether
    each says the new target (:func:`validation.gate.answers.says` on the whole greedy continuation)."""
    from validation.gate.answers import says

    if not requests:
        return []
    prompts = [r["prompt"] for r in requests]
    said = {}
    for v in (before, after):
        opened = open_model(f"{name}/{v}", store)
        said[v] = answers(opened.model, opened.tokenizer, prompts, top=1)
    return [{"id": r["id"], "subject": r.get("subject"), "prompt": r["prompt"], "target_new": r["target_new"],
             "base": b.answer, "champion": a.answer, "says_new": says(a.continuation, r["target_new"]),
             "said_new_before": says(b.continuation, r["target_new"])}
            for r, b, a in zip(requests, said[before], said[after])]


def run_answers(result: dict[str, Any], store: Any = None) -> list[dict[str, Any]]:
    """:func:`before_after` for a run of the pipeline (``factsmith run`` / ``demo``'s result): each request the
    run applied, in whichever of its versions (a run with follow-ups registers several), asked of the version it
    edited (``parent_version``) and of the last version it registered; empty when the run registered nothing.
    The prompts (the subject filled in) and targets are the run's ``states["applied"]``."""
    if result.get("version") is None:
        return []
    rows = [{"id": a["id"], "subject": a["subject"], "prompt": a["prompt"], "target_new": a["new"]}
            for a in result["states"].get("applied", [])]
    return before_after(result["model"], result["parent_version"], result["version"], rows, store)
