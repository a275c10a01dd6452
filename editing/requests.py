"""What an edit is asked to do: one request = (subject, prompt template, new target).

The editing engine needs only these fields; the full request model with provenance, validation and every
input format is :mod:`validation` (issue 4). :func:`read_native` reads the native JSONL of
../shared/DESIGN.md strictly (errors name the file, line and field) so that ``factsmith edit`` works today.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RequestError(ValueError):
    """A request file or field is wrong; the message names the file, line and field."""


@dataclass(frozen=True)
class EditRequest:
    subject: str
    prompt: str  # template with exactly one "{}" where the subject goes
    target_new: str
    target_true: str | None = None
    id: str = ""
    paraphrase_prompts: tuple[str, ...] = ()  # full strings (subject filled in)
    neighborhood_prompts: tuple[tuple[str, str], ...] = ()  # (full prompt, expected target)
    # Templates ("{}" = the subject) of the subject's *other* facts: the target optimisation keeps the model's
    # next-token distribution on them (an edit of Germany's leader must leave Germany's capital alone).
    keep_prompts: tuple[str, ...] = ()
    # More templates of the same fact ("{}" = the subject) the target is optimised on, without context prefixes:
    # a phrasing with the subject first, where the key and hidden state differ from the prompt's.
    rewrite_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"request {self.id!r}: " if self.id else ""
        if not self.subject.strip():
            raise RequestError(f"{where}'subject' is empty")
        if self.prompt.count("{}") != 1:
            raise RequestError(f"{where}'prompt' must contain exactly one '{{}}', found {self.prompt.count('{}')}")
        if not self.target_new.strip():
            raise RequestError(f"{where}'target_new' is empty")
        for name in ("keep_prompts", "rewrite_prompts"):
            for t in getattr(self, name):
                if t.count("{}") != 1:
                    raise RequestError(f"{where}'{name}': each needs exactly one '{{}}', found {t!r}")

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject, 1)

    def key(self) -> tuple[str, str]:
        """MEMIT needs distinct keys: two requests with one (subject, prompt) in a batch contradict."""
        return (self.subject, self.prompt)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "subject": self.subject, "prompt": self.prompt, "target_new": self.target_new,
            "target_true": self.target_true, "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": [{"prompt": p, "target": t} for p, t in self.neighborhood_prompts],
            **({"keep_prompts": list(self.keep_prompts)} if self.keep_prompts else {}),
            **({"rewrite_prompts": list(self.rewrite_prompts)} if self.rewrite_prompts else {}),
        }


def check_distinct(requests: list[EditRequest]) -> None:
    """Raise naming both requests when two share a subject and prompt."""
    seen: dict[tuple[str, str], EditRequest] = {}
    for i, r in enumerate(requests):
        k = r.key()
        if k in seen:
            a = seen[k]
            raise RequestError(
                f"requests {a.id or '#' + str(requests.index(a) + 1)!r} and {r.id or '#' + str(i + 1)!r} both edit "
                f"subject {r.subject!r} under prompt {r.prompt!r}: one batch needs distinct (subject, prompt) keys")
        seen[k] = r


def _text(path: Path, line: int, row: dict, name: str, required: bool = True) -> str | None:
    v = row.get(name)
    if v is None:
        if required:
            raise RequestError(f"{path}:{line}: field '{name}' is missing")
        return None
    if not isinstance(v, str):
        raise RequestError(f"{path}:{line}: field '{name}': expected a string, found {type(v).__name__}")
    return v


def read_native(path: str | Path) -> list[EditRequest]:
    """Requests from a native JSONL file (``id``, ``subject``, ``prompt``, ``target_new``, optional
    ``target_true``, ``paraphrase_prompts``, ``neighborhood_prompts``; other fields are provenance and
    are ignored here)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may be inside a string
    except FileNotFoundError:
        raise RequestError(f"{p}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise RequestError(f"{p}: cannot read as UTF-8 JSONL: {e}") from None
    out = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestError(f"{p}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise RequestError(f"{p}:{n}: expected a JSON object, found {type(row).__name__}")
        para = row.get("paraphrase_prompts") or []
        if not isinstance(para, list) or not all(isinstance(x, str) for x in para):
            raise RequestError(f"{p}:{n}: field 'paraphrase_prompts': expected a list of strings")
        neigh = row.get("neighborhood_prompts") or []
        if not isinstance(neigh, list) or not all(
                isinstance(x, dict) and isinstance(x.get("prompt"), str) and isinstance(x.get("target"), str)
                for x in neigh):
            raise RequestError(f"{p}:{n}: field 'neighborhood_prompts': expected a list of {{prompt, target}} objects")
        try:
            out.append(EditRequest(
                subject=_text(p, n, row, "subject"), prompt=_text(p, n, row, "prompt"),
                target_new=_text(p, n, row, "target_new"), target_true=_text(p, n, row, "target_true", False),
                id=str(row.get("id") or f"{p.name}:{n}"), paraphrase_prompts=tuple(para),
                neighborhood_prompts=tuple((x["prompt"], x["target"]) for x in neigh)))
        except RequestError as e:
            raise RequestError(f"{p}:{n}: {e}") from None
    if not out:
        raise RequestError(f"{p}: no requests in the file")
    return out

