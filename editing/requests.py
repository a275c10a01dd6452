"""What the editing engine is asked to do: one request = (subject, prompt template, new target), and the
prompts the edit must keep or should also learn.

This is the engine's view of a request. The request model of factsmith -- provenance, validation, every input
format -- is :class:`validation.requests.Request`, from intake to the ledger; ``Request.to_edit_request`` is
the one adapter to this type.
"""

from __future__ import annotations

from dataclasses import dataclass
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
