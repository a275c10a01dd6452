"""Weights of registered versions: a whole Hugging Face directory for version 1, patches after that.

A *weights patch* holds the full new values of only the tensors an edit changed (safetensors, never
pickle). Rebuilding a version = loading the base directory and copying each patch along the parent chain
into the state dict. That is bit-exact by construction: no arithmetic happens at load time, whereas
recomputing W + U Vᵀ would depend on the BLAS and thread count (../shared/FINDINGS.md). The delta itself is
stored beside the patch for audit and for re-deriving edits, but is never needed to load a version.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .errors import InvalidInputError, RegistryError

log = logging.getLogger(__name__)

PATCH_FORMAT = "factsmith.patch/1"


def check_model_dir(model_dir: Path) -> None:
    """A Hugging Face directory with a config and safetensors weights, else :class:`InvalidInputError`."""
    if not model_dir.is_dir():
        found = "a file" if model_dir.exists() else "nothing"
        raise InvalidInputError(f"{model_dir}: expected a model directory, found {found}")
    if not (model_dir / "config.json").is_file():
        raise InvalidInputError(f"{model_dir}: expected a Hugging Face model directory (config.json), found none")
    if not any(p.name.startswith("model") for p in model_dir.glob("*.safetensors")):
        found = sorted(p.name for p in model_dir.iterdir())[:8]
        raise InvalidInputError(f"{model_dir}: expected safetensors weights (model*.safetensors), found {found}")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def stage_model_dir(model_dir: Path, out: Path) -> list[str]:
    """Hard-link (or copy) ``model_dir``'s files into ``out`` except pickled weights, which the registry never
    stores (loading them runs code); returns the names left out."""
    skipped = []
    for src in sorted(model_dir.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(model_dir)
        if src.suffix in PICKLE_SUFFIXES:
            skipped.append(str(rel))
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or no hard links
            shutil.copy2(src, dst)
    if skipped:
        log.warning("%s: not registering pickled files %s (safetensors only)", model_dir, skipped)
    return skipped


def load_hf(model_dir: Path):
    """(model, tokenizer) from a local directory, exactly as every registry read loads it (so hashes agree)."""
    from editing.modeldir import ModelDirError, load

    check_model_dir(model_dir)
    try:
        return load(model_dir)
    except ModelDirError as e:
        raise InvalidInputError(str(e)) from None


def changed_tensors(parent: nn.Module, child: nn.Module) -> dict[str, torch.Tensor]:
    """The child's tensors that differ from the parent's (bitwise), by state-dict key; the two models must
    have the same keys, shapes and dtypes (an edit changes values only)."""
    ps, cs = parent.state_dict(), child.state_dict()
    if ps.keys() != cs.keys():
        extra, missing = sorted(cs.keys() - ps.keys()), sorted(ps.keys() - cs.keys())
        raise InvalidInputError(f"the edited model's tensors differ from its parent's: extra {extra[:5]}, "
                                f"missing {missing[:5]}")
    out = {}
    for key, c in cs.items():
        p = ps[key]
        if p.shape != c.shape or p.dtype != c.dtype:
            raise InvalidInputError(f"tensor {key!r}: parent is {p.dtype} {tuple(p.shape)}, the edited model "
                                    f"{c.dtype} {tuple(c.shape)}: an edit changes values, not shapes or dtypes")
        if not torch.equal(p, c):
            out[key] = c
    return out


def save_patch(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # clone: tied tensors share storage, which save_file refuses; a patch never needs the sharing
    save_file({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}, str(path),
              metadata={"format": PATCH_FORMAT, **meta})


def load_patch(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
            if fmt != PATCH_FORMAT:
                raise RegistryError(f"{path}: expected a factsmith weights patch ({PATCH_FORMAT}), found format {fmt!r}")
            return {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise RegistryError(f"{path}: cannot read weights patch: {e}") from None


def apply_patch(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy each tensor over the model's (state-dict entries share storage with the parameters)."""
    sd = model.state_dict()
    with torch.no_grad():
        for key, t in tensors.items():
            if key not in sd:
                raise RegistryError(f"{where}: the patch has tensor {key!r}, the model has none")
            if sd[key].shape != t.shape or sd[key].dtype != t.dtype:
                raise RegistryError(f"{where}: tensor {key!r} is {t.dtype} {tuple(t.shape)} in the patch, "
                                    f"{sd[key].dtype} {tuple(sd[key].shape)} in the model")
            sd[key].copy_(t)
