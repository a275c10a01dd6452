"""The one hook utility: trace (and optionally edit) modules by dotted name, hooks always removed.

    with Trace(model, ["transformer.h.3.mlp.c_proj"], retain_input=True) as tr:
        model(input_ids)
    keys = tr["transformer.h.3.mlp.c_proj"].input  # (B, T, d_mlp)

A module may return a tensor or a tuple whose first element is the hidden state (transformers 5 returns a
tensor from a GPT-2 block where 4.x returned a tuple — a reference editor that indexes ``[0]`` edits batch
row 0 silently). ``Trace`` always records and edits the hidden-state tensor, whichever form comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

# edit(name, hidden) -> new hidden (same shape); called on the module's output hidden state
EditFn = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class Record:
    input: torch.Tensor | None = None  # first positional input
    output: torch.Tensor | None = None  # hidden-state output (first element of a tuple)


def hidden_of(output):
    """The hidden-state tensor of a module output (tensor or tuple/list whose first item is it)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output, hidden: torch.Tensor):
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


class StopForward(Exception):
    """Raised by :func:`stop_after` to end a forward pass once the module it watches has run."""


class stop_after:
    """Within the block, a forward pass ends (``StopForward``) right after the module ``name`` runs: what the
    layers above it would compute is not needed (a statistics pass over the keys of the lower layers). The
    hook is registered last, so a :class:`Trace` on the same module records first.

        with Trace(model, [name], retain_input=True) as tr, stop_after(model, name):
            try:
                model(ids)
            except StopForward:
                pass
    """

    def __init__(self, model: nn.Module, name: str):
        self.module = model.get_submodule(name)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> "stop_after":
        def hook(module, inputs, output):
            raise StopForward

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class Trace:
    """Record inputs/outputs of named modules during forward passes; optionally rewrite outputs.

    ``detach`` (default True) stores detached clones; pass ``detach=False`` to keep the autograd graph
    (v* optimisation needs gradients through a traced activation). Hooks are removed on exit, also when
    the body raises.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        *,
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: EditFn | None = None,
        detach: bool = True,
    ):
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.retain_input = retain_input
        self.retain_output = retain_output
        self.edit_output = edit_output
        self.detach = detach
        self.records: dict[str, Record] = {n: Record() for n in self.names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __getitem__(self, name: str) -> Record:
        return self.records[name]

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone() if self.detach else t

    def __enter__(self) -> "Trace":
        try:
            for name in self.names:
                mod = self.model.get_submodule(name)
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def _hook(self, name: str):
        def hook(module, inputs, output):
            rec = self.records[name]
            if self.retain_input and inputs:
                rec.input = self._keep(inputs[0])
            if self.edit_output is not None:
                new = self.edit_output(name, hidden_of(output))
                output = _replace_hidden(output, new)
            if self.retain_output:
                rec.output = self._keep(hidden_of(output))
            return output if self.edit_output is not None else None

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.close()
