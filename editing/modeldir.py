"""A model directory: a Hugging Face causal LM on disk (``config.json``, safetensors weights, tokenizer), and
the files factsmith keeps beside it. The one loader and the one edited-model writer of the project.

Files beside the weights:

* ``sandbox.json`` (:data:`MANIFEST`): a sandbox's build manifest (its presence selects the sandbox presets);
* ``facts.jsonl`` (:data:`FACTS_FILE`): the facts a sandbox was trained on (the gate's probes);
* ``stats_corpus.txt`` (:data:`STATS_CORPUS`): text for the covariance statistics (a sandbox's training text);
* ``delta.safetensors`` (:data:`DELTA`) and ``edit.json`` (:data:`EDIT_RECORD`): what ``factsmith edit`` wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import nn

MANIFEST = "sandbox.json"
FACTS_FILE = "facts.jsonl"
STATS_CORPUS = "stats_corpus.txt"
DELTA = "delta.safetensors"
EDIT_RECORD = "edit.json"
# what an edited copy of a model directory keeps from its source: an edited sandbox stays a sandbox
CARRIED = (FACTS_FILE, MANIFEST, STATS_CORPUS)


class ModelDirError(ValueError):
    """A directory is not a loadable model; the message names it and what is missing."""


DTYPES = ("float32", "bfloat16", "float16")


def check_placement(device: str | None, dtype: str | None) -> None:
    """ValueError naming ``device`` or ``dtype`` unless a model can be loaded there in that dtype."""
    import torch

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device torch can use")


def load(model_dir: Path, device: str | None = None, dtype: str | None = None) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) from a local directory: safetensors only, nothing from the network.

    ``device``: where the model goes (``cpu``, ``cuda``, ``cuda:1``; default the CPU). ``dtype``: one of
    :data:`DTYPES` to cast the weights to as they load (default: as stored)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelDirError(f"{model_dir}: not a model directory (no config.json)")
    check_placement(device, dtype)
    extra = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True, **extra)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}: expected a tokenizer beside the weights: {e}") from None
    model = model.eval()
    return (model.to(device) if device else model), tok


def family(model_dir: Path, model: nn.Module | None = None) -> str:
    """The preset family of a model directory: ``sandbox`` for factsmith's own models, else the architecture's
    (from the loaded ``model``, or the directory's ``config.json``)."""
    from .arch import spec_for

    model_dir = Path(model_dir)
    if (model_dir / MANIFEST).is_file():
        return "sandbox"
    if model is None:
        from types import SimpleNamespace

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        model = SimpleNamespace(config=SimpleNamespace(model_type=config.get("model_type")))
    return spec_for(model).family


def model_corpus(model_dir: str | Path) -> list[Path] | None:
    """The statistics corpus a model directory ships (a sandbox's training text), or None if it has none."""
    p = Path(model_dir) / STATS_CORPUS
    return [p] if p.is_file() else None


def write_edited(model: nn.Module, tokenizer, out: Path, source_dir: Path,
                 files: dict[str, Callable[[Path], None]], check: Callable[[Path], None] | None = None) -> None:
    """Write an edited model to ``out`` atomically: a sibling temporary directory renamed into place (an ``out``
    that exists is replaced; the caller decides whether it may be). ``files``: name -> a function that writes
    that file at the path it is given, beside the weights; the source directory's :data:`CARRIED` files are
    copied. ``check(tmp)``, when given, runs on the finished directory before it is renamed: raising leaves
    ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")  # a sibling: the final rename is atomic
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would stick to out)
    try:
        # transformers 5 always writes safetensors (its save_pretrained has no safe_serialization switch)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in CARRIED:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, tmp / name)
        for name, write in files.items():
            write(tmp / name)
        if check is not None:
            check(tmp)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``, replacing what is there."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        else:
            out.rmdir()
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
