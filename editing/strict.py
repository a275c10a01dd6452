"""Frozen dataclasses read strictly from YAML: a key the dataclass does not know, a value of the wrong type or a
missing required key is an error that names the key -- an audited pipeline refuses a setting it does not
understand rather than ignoring it. The editing hparams, the gate policy and the sandbox config are read here.

Each caller passes its own error class (``error``) and a label for its messages (``label``: "sandbox config ").
Types come from the dataclass's annotations: ints are not bools, floats accept ints, tuples come from YAML
lists, nested dataclasses from mappings.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """The YAML document in a file; ``error`` names the file (``what``: 'the gate policy', ...)."""
    import yaml

    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read {what}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None


def check_fields(obj: Any, prefix: str = "", error: type[Exception] = ValueError, label: str = "") -> None:
    """Type-check a dataclass's fields against their annotations (call it from ``__post_init__``)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list):
            object.__setattr__(obj, f.name, _tupled(v))  # lists from Python code are accepted as tuples
        _check_value(getattr(obj, f.name), hints[f.name], prefix + f.name, error, label)


def from_mapping(cls: type, data: Any, prefix: str = "", error: type[Exception] = ValueError, label: str = "") -> Any:
    """An instance of ``cls`` from a mapping (nested dataclasses from nested mappings)."""
    if not isinstance(data, dict):
        raise error(f"{label}'{prefix.rstrip('.') or cls.__name__}': expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{label}unknown key(s) {', '.join(repr(prefix + k) for k in unknown)} "
                    f"(known: {', '.join(sorted(known))})")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if isinstance(tp, type) and is_dataclass(tp):
            kwargs[k] = from_mapping(tp, v, f"{prefix}{k}.", error, label)
        else:
            kwargs[k] = _tupled(v)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise error(f"{label}{prefix or cls.__name__ + ': '}{e}") from None


def _check_value(v: Any, tp: Any, key: str, error: type[Exception], label: str) -> None:
    if typing.get_origin(tp) is tuple:
        if not isinstance(v, tuple):
            raise error(f"{label}'{key}': expected a list, found {type(v).__name__} {v!r}")
        args = typing.get_args(tp)
        items = args[:1] * len(v) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(v):
            raise error(f"{label}'{key}': expected {len(items)} items, found {len(v)}")
        for i, (x, t) in enumerate(zip(v, items)):
            _check_value(x, t, f"{key}[{i}]", error, label)
        return
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(v, tp):
            raise error(f"{label}'{key}': expected a mapping, found {type(v).__name__}")
        return
    want = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}[tp]
    if (isinstance(v, bool) and tp is not bool) or not isinstance(v, want):
        raise error(f"{label}'{key}': expected {tp.__name__}, found {type(v).__name__} {v!r}")


def _tupled(v: Any) -> Any:
    return tuple(_tupled(x) for x in v) if isinstance(v, list) else v
