"""An edit as an artifact: per-layer low-rank factors, ΔW = U Vᵀ, saved as safetensors.

Computing an edit never touches the model; :func:`apply` adds a delta in place and returns a handle whose
:meth:`Applied.revert` restores the exact original weights (it keeps the original tensors of the edited
matrices: a float subtraction W + ΔW − ΔW is not bit-exact). Deltas compose by concatenating factors.

ΔW is always in (out, in) orientation (``value = W @ key``); :func:`apply` transposes it for GPT-2's
``Conv1D``, which stores (in, out). The orientation comes from the module type (:mod:`editing.arch`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import is_transposed

FORMAT = "factsmith.delta/1"


class DeltaError(ValueError):
    """A delta file is unreadable, or does not fit the model it is applied to."""


@dataclass
class LayerDelta:
    """ΔW = U @ V.T for the weight of module ``name``; U: (out, r), V: (in, r)."""

    U: torch.Tensor
    V: torch.Tensor

    def __post_init__(self) -> None:
        if self.U.dim() != 2 or self.V.dim() != 2 or self.U.shape[1] != self.V.shape[1]:
            raise DeltaError(f"factors must be (out, r) and (in, r); found {tuple(self.U.shape)} and {tuple(self.V.shape)}")

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def dense(self) -> torch.Tensor:
        """ΔW (out, in), computed in float64."""
        return self.U.double() @ self.V.double().T


@dataclass
class Delta:
    layers: dict[str, LayerDelta]  # module name -> factors
    meta: dict[str, Any] = field(default_factory=dict)  # requests, hparams, base weights hash, timings

    def compose(self, later: "Delta") -> "Delta":
        """The delta of applying ``self`` and then ``later`` (ranks add on shared layers)."""
        layers = dict(self.layers)
        for name, d in later.layers.items():
            if name in layers:
                a = layers[name]
                layers[name] = LayerDelta(torch.cat([a.U, d.U], 1), torch.cat([a.V, d.V], 1))
            else:
                layers[name] = d
        return Delta(layers, {"composed_of": [self.meta, later.meta]})

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for name, d in self.layers.items():
            tensors[f"{name}::U"] = d.U.detach().contiguous().cpu()
            tensors[f"{name}::V"] = d.V.detach().contiguous().cpu()
        header = {"format": FORMAT, "meta": json.dumps(self.meta, sort_keys=True, default=str)}
        save_file(tensors, str(path), metadata=header)

    @classmethod
    def load(cls, path: str | Path) -> "Delta":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise DeltaError(f"{path}: not a factsmith delta (format {header.get('format')!r})")
                keys = list(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys}
        except (OSError, SafetensorError) as e:  # missing file, or not safetensors at all
            raise DeltaError(f"{path}: cannot read delta: {e}") from None
        names = sorted({k.rsplit("::", 1)[0] for k in keys})
        try:
            layers = {n: LayerDelta(tensors[f"{n}::U"], tensors[f"{n}::V"]) for n in names}
        except KeyError as e:
            raise DeltaError(f"{path}: factor {e.args[0]} missing") from None
        return cls(layers, json.loads(header.get("meta", "{}")))


def weights_sha256(model: nn.Module, names: list[str] | None = None) -> str:
    """SHA-256 over the named modules' weights (all parameters when ``names`` is None), in a fixed order."""
    h = hashlib.sha256()
    if names is None:
        items = sorted(model.state_dict().items())
    else:
        items = [(f"{n}.weight", model.get_submodule(n).weight) for n in sorted(names)]
    for key, t in items:
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Applied:
    """Handle of an applied delta: the original tensors of the matrices it changed."""

    model: nn.Module
    originals: dict[str, torch.Tensor]

    def revert(self) -> None:
        """Put the exact original weights back (bit-for-bit)."""
        with torch.no_grad():
            for name, orig in self.originals.items():
                self.model.get_submodule(name).weight.copy_(orig)
        self.originals = {}


def apply(model: nn.Module, delta: Delta) -> Applied:
    """Add ``delta`` to the model's weights in place (ΔW computed in float64, added in the weight's
    dtype); returns the handle that reverts it exactly."""
    plans = []
    for name, d in delta.layers.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise DeltaError(f"the model has no module {name!r}") from None
        dw = d.dense()
        if is_transposed(mod):
            dw = dw.T
        if tuple(dw.shape) != tuple(mod.weight.shape):
            raise DeltaError(f"{name}: delta is {tuple(dw.shape)} but the weight is {tuple(mod.weight.shape)}")
        plans.append((name, mod, dw))
    originals = {}
    with torch.no_grad():  # all shapes checked first: a bad delta changes nothing
        for name, mod, dw in plans:
            originals[name] = mod.weight.detach().clone()
            mod.weight.copy_((mod.weight.double() + dw.to(mod.weight.device)).to(mod.weight.dtype))
    return Applied(model, originals)
