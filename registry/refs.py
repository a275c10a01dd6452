"""Model names and version references.

A model name becomes part of paths (the ledger file, locks, the artifact folder) and of MLflow filter
strings, so it is checked against a strict pattern before any use: letters, digits, ``.``, ``_``, ``-``,
starting with a letter or digit (so never ``.``, ``..``, a slash or a quote).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInputError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else :class:`InvalidInputError` naming the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"model name {name!r}: expected 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Ref:
    """A model version by number (``NAME/3``) or by alias (``NAME@champion``)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def parse_ref(text: str) -> Ref:
    """``NAME@ALIAS``, ``NAME/VERSION`` or the same behind ``models:/`` (MLflow's spelling)."""
    raw = text
    if text.startswith("models:/"):
        text = text[len("models:/"):]
    if "@" in text:
        name, alias = text.split("@", 1)
        if not ALIAS_RE.fullmatch(alias):
            raise InvalidInputError(f"{raw!r}: alias {alias!r} is not a valid alias")
        return Ref(check_name(name), alias=alias)
    if "/" in text:
        name, ver = text.rsplit("/", 1)
        if not ver.isdigit() or int(ver) < 1:
            raise InvalidInputError(f"{raw!r}: expected a version number >= 1 after '/', found {ver!r}")
        return Ref(check_name(name), version=int(ver))
    raise InvalidInputError(f"{raw!r}: expected NAME@ALIAS (e.g. sandbox@champion) or NAME/VERSION (e.g. sandbox/3)")
