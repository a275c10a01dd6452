"""The one architecture table: abstract sites -> Hugging Face module paths, per model family.

This is the only place in factsmith that knows ``transformer.h.{}.mlp.c_proj`` or
``model.layers.{}.mlp.down_proj``. ROME and MEMIT rewrite the MLP *output* matrix of a layer; its input
(the MLP's hidden activation, after the nonlinearity) is the "key" k and its output the "value" v.
Weight orientation comes from the module type (GPT-2's ``Conv1D`` stores (in, out), ``nn.Linear`` stores
(out, in)), never from the shape: a square MLP would make a shape test silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The model's family is not in the table, or its modules are not where the table says."""


@dataclass(frozen=True)
class ArchSpec:
    family: str
    layers: str  # the ModuleList of transformer blocks
    mlp_out: str  # the matrix ROME/MEMIT rewrite; its input is the key, its output the value
    mlp: str  # the whole MLP (its output is what causal tracing restores)
    attn: str
    embed: str  # token embeddings (causal tracing corrupts their output)
    final_norm: str
    lm_head: str

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_at(self, i: int) -> str:
        return self.mlp_out.format(i)

    def mlp_at(self, i: int) -> str:
        return self.mlp.format(i)

    def attn_at(self, i: int) -> str:
        return self.attn.format(i)


_LLAMA_LIKE = dict(
    layers="model.layers",
    mlp_out="model.layers.{}.mlp.down_proj",
    mlp="model.layers.{}.mlp",
    attn="model.layers.{}.self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

TABLE: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("gpt2", "transformer.h", "transformer.h.{}.mlp.c_proj", "transformer.h.{}.mlp",
                     "transformer.h.{}.attn", "transformer.wte", "transformer.ln_f", "lm_head"),
    "gptj": ArchSpec("gptj", "transformer.h", "transformer.h.{}.mlp.fc_out", "transformer.h.{}.mlp",
                     "transformer.h.{}.attn", "transformer.wte", "transformer.ln_f", "lm_head"),
    "gpt_neox": ArchSpec("gpt_neox", "gpt_neox.layers", "gpt_neox.layers.{}.mlp.dense_4h_to_h",
                         "gpt_neox.layers.{}.mlp", "gpt_neox.layers.{}.attention", "gpt_neox.embed_in",
                         "gpt_neox.final_layer_norm", "embed_out"),
    "llama": ArchSpec("llama", **_LLAMA_LIKE),
    "mistral": ArchSpec("mistral", **_LLAMA_LIKE),
    "qwen2": ArchSpec("qwen2", **_LLAMA_LIKE),
}


def spec_for(model: nn.Module) -> ArchSpec:
    """The table row of ``model`` (by ``config.model_type``)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in TABLE:
        raise ArchitectureError(f"model type {mt!r} is not supported; supported: {', '.join(sorted(TABLE))}")
    return TABLE[mt]


def module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(f"{type(model).__name__} has no module {path!r}") from None


def n_layers(model: nn.Module) -> int:
    return len(module(model, spec_for(model).layers))


def hidden_size(model: nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[1]


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_transposed(m: nn.Module) -> bool:
    """True when ``m.weight`` is stored (in, out) — GPT-2's Conv1D — rather than (out, in)."""
    if isinstance(m, _conv1d_type()):
        return True
    if isinstance(m, nn.Linear):
        return False
    raise ArchitectureError(f"expected nn.Linear or Conv1D, found {type(m).__name__}")


def weight_out_in(m: nn.Module) -> torch.Tensor:
    """``m.weight`` as an (out, in) view, so that ``value = W @ key`` whatever the storage."""
    return m.weight.T if is_transposed(m) else m.weight


def edit_matrix(model: nn.Module, layer: int) -> nn.Module:
    """The MLP output module ROME/MEMIT rewrite at ``layer``."""
    spec = spec_for(model)
    L = n_layers(model)
    if not 0 <= layer < L:
        raise ArchitectureError(f"layer {layer} out of range: {spec.family} model has {L} layers (0..{L - 1})")
    return module(model, spec.mlp_out_at(layer))


def key_size(model: nn.Module, layer: int = 0) -> int:
    """Width of the keys (inputs of the MLP output matrix)."""
    return weight_out_in(edit_matrix(model, layer)).shape[1]
