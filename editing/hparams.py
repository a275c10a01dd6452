"""Hyperparameters: frozen dataclasses loaded from YAML, strictly.

Each method's own class lives with the method (:mod:`editing.methods`); the parts every method shares (the
target optimisation, the statistics) and the loader live here. One YAML file per model family and method
lives in ``editing/presets/`` (``rome-gpt2.yaml``, ``memit-llama.yaml``, ...). A file holds the method's
numbers only: no module names (those come from the architecture table, :mod:`editing.arch`), no device, no
paths. Unknown keys and wrong types are errors that name the key (:mod:`editing.strict`).
"""

from __future__ import annotations

from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from .methods import DEFAULT, choices, get
from .strict import from_mapping, read_yaml
from .methods.base import HparamsError, StatsHparams, TargetHparams  # noqa: F401  (the hparams API)


# A method's hyperparameters: a frozen dataclass with ``method`` (its name), ``target`` and ``stats``.
Hparams = Any


# --------------------------------------------------------------------------------------------------
# Loading and type checking


def from_dict(method: str, data: dict[str, Any]) -> Hparams:
    cls = get(method).hparams
    data = dict(data)
    declared = data.pop("method", method)
    if declared != method:
        raise HparamsError(f"'method': the file is for {declared!r}, not {method!r}")
    return from_mapping(cls, data, error=HparamsError)


def to_dict(hp: Hparams) -> dict[str, Any]:
    """Plain JSON-able form (tuples as lists), with the method name."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {"method": hp.method, **plain(asdict(hp))}


def load(path: str | Path, method: str | None = None) -> Hparams:
    """Read a hyperparameter YAML file; ``method`` defaults to the file's own ``method`` key."""
    p = Path(path)
    data = read_yaml(p, HparamsError, "the hparams")
    if not isinstance(data, dict):
        raise HparamsError(f"{p}: expected a mapping of hyperparameters, found {type(data).__name__}")
    method = method or data.get("method")
    if method is None:
        raise HparamsError(f"{p}: 'method' is missing ({choices()})")
    try:
        return from_dict(method, data)
    except HparamsError as e:
        raise HparamsError(f"{p}: {e}") from None


# Families that share another's layout (and so its shipped defaults).
ALIASES = {"mistral": "llama", "qwen2": "llama"}


def builtin_path(method: str, family: str) -> Path:
    """The shipped hparams file of ``method`` for a model family (``sandbox`` for factsmith's own models)."""
    presets = Path(str(resources.files("editing") / "presets"))
    path = presets / f"{method}-{ALIASES.get(family, family)}.yaml"
    if not path.is_file():
        shipped = sorted(q.name for q in presets.iterdir() if q.name.endswith(".yaml"))
        raise HparamsError(f"no shipped {method} hparams for model family {family!r}; shipped: {', '.join(shipped)}; "
                           "pass --hparams FILE")
    return path


def default(method: str, family: str) -> Hparams:
    return load(builtin_path(method, family), method)


def resolve(method: str | None, file: str | Path | None, model_dir: Path, model: Any = None) -> tuple[Hparams, Path]:
    """(hparams, the file they came from): ``file`` if given, else the shipped preset of the model directory's
    family (``sandbox`` for factsmith's own models). ``method`` None: the file's own, else the default method."""
    from .modeldir import family

    if file is not None:
        return load(file, method), Path(file)
    path = builtin_path(method or DEFAULT, family(model_dir, model))
    return load(path, method or DEFAULT), path


def with_changes(hp: Hparams, **changes: Any) -> Hparams:
    """A copy with top-level fields or ``target__x`` / ``stats__x`` nested fields replaced (benchmarks, tests)."""
    from dataclasses import replace

    nested: dict[str, dict[str, Any]] = {}
    top = {}
    for k, v in changes.items():
        if "__" in k:
            group, name = k.split("__", 1)
            nested.setdefault(group, {})[name] = v
        else:
            top[k] = v
    for group, vals in nested.items():
        top[group] = replace(getattr(hp, group), **vals)
    return replace(hp, **top)

