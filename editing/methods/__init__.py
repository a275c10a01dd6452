"""The editing methods, in one table. A method is a module here plus one row of :data:`METHODS`.

The engine (:func:`editing.engine.compute_edit`) does what every method shares: context templates, the
covariance statistics of the layers the method edits, timings, the delta's audit metadata. A method computes
the delta from those:

    out = method.compute(Inputs(model, tokenizer, requests, hp, templates, covs, emit, state))

and may carry state from one edit to the next (``out.state``; ``None`` for a stateless method). The CLI, the
pipeline and the benchmarks read method names, help and defaults from this table; adding a method is one
folder — ``__init__.py`` with its hparams class and its :class:`~editing.methods.base.Method` row, ``solve.py``
with ``run(Inputs) -> Output`` — and one name in :data:`METHODS`. Reading the table imports no torch (the CLI's
``--help`` stays fast); a method's ``solve`` module loads when an edit runs.
"""

from __future__ import annotations

from typing import Any

from . import alphaedit, memit, rome
from .base import HparamsError, Method

METHODS: dict[str, Method] = {m.name: m for m in (rome.METHOD, memit.METHOD, alphaedit.METHOD)}
DEFAULT = "memit"


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def choices() -> str:
    """'rome or memit' (for messages)."""
    n = names()
    return ", ".join(n[:-1]) + " or " + n[-1] if len(n) > 1 else n[0]


def help_text() -> str:
    """'rome (…) or memit (…)' (for --method's help)."""
    parts = [f"{m.name} ({m.summary})" for m in METHODS.values()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


def get(name: str) -> Method:
    if name not in METHODS:
        raise HparamsError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def of(hp: Any) -> Method:
    """The method of an hparams object."""
    return get(hp.method)
