"""Second-moment statistics of an edited layer's keys: C = E[k kᵀ], k the input of the MLP output matrix.

ROME's update is C⁻¹-weighted and MEMIT solves (λ C + K Kᵀ); C says which key directions ordinary text
uses, so that an edit moves the model along directions that other inputs rarely take.

Corpora:

* the built-in default, ``model-samples``: text the model writes itself (top-k samples from its
  end-of-text/BOS token, seeded). It needs no data, fits any model, and for a sandbox model it is exactly
  the distribution of sentences the model was trained on;
* text files (``.txt``: one document per blank-line-separated paragraph) and JSONL (``{"text": ...}`` per
  line), given by the user.

Every token of every sample contributes one key. Results are cached (safetensors) by the SHA-256 of
the weights that determine the layer's keys (embeddings and all blocks up to the layer, except the matrix
being edited — so sequential edits of one layer reuse the statistics), the corpus hash, the token count and
the dtype.

At scale the pass is split into shards (:func:`shard_second_moments`, one per worker; ``flows.stats_flow``
maps them over a Dask cluster) whose float64 sums :func:`combine_shards` adds up into the same C.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import jsonl
from .arch import edit_matrix, key_size, spec_for
from .context import sample_ids
from .hooks import StopForward, Trace, stop_after
from .store import Cache

log = logging.getLogger(__name__)

BUILTIN = "model-samples"

# progress(done_samples, total_samples)
Progress = Callable[[int, int], None]


class CorpusError(ValueError):
    """A statistics corpus cannot be read."""


@dataclass(frozen=True)
class Corpus:
    """Token-id sequences to stream through the model, and the hash that identifies them."""

    name: str
    sequences: list[list[int]]
    sha256: str

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def _hash_sequences(seqs: list[list[int]]) -> str:
    h = hashlib.sha256()
    for s in seqs:
        h.update(json.dumps(s).encode())
        h.update(b"\n")
    return h.hexdigest()


def _max_len(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)


def builtin_corpus(model: nn.Module, tokenizer, samples: int, tokens: int, seed: int = 0) -> Corpus:
    """``samples`` texts of ``tokens`` tokens sampled from the model after its BOS / end-of-text token."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise CorpusError("the tokenizer has neither a BOS nor an end-of-text token to sample the built-in corpus "
                          "from; pass a text corpus")
    tokens = min(tokens, _max_len(model) - 1)
    new = sample_ids(model, [[start]] * samples, tokens, seed=seed, batch_size=256)
    seqs = [[start, *s] for s in new]
    return Corpus(BUILTIN, seqs, _hash_sequences(seqs))


def file_corpus(paths: list[Path], tokenizer, max_len: int, limit: int | None = None) -> Corpus:
    """Documents from text files (blank-line-separated paragraphs) or JSONL (``text`` field), tokenized and
    cut to the model's context length."""
    docs: list[str] = []
    for p in paths:
        raw = jsonl.read_text(p, CorpusError, "the corpus file")
        if str(p).endswith((".jsonl", ".json")):
            for n, row in jsonl.objects(p, raw, CorpusError):
                if not isinstance(row.get("text"), str):
                    raise CorpusError(f"{p}:{n}: field 'text': expected an object with a string 'text'")
                docs.append(row["text"])
        else:
            docs.extend(d.strip() for d in raw.split("\n\n") if d.strip())
    if limit is not None:
        docs = docs[:limit]
    if not docs:
        raise CorpusError(f"no text in {', '.join(map(str, paths))}")
    seqs = [list(tokenizer(d)["input_ids"])[:max_len] for d in docs]
    seqs = [s for s in seqs if s]
    return Corpus(",".join(Path(p).name for p in paths), seqs, _hash_sequences(seqs))


def upstream_hash(model: nn.Module, layer: int) -> str:
    """SHA-256 of every parameter that can change the keys of ``layer``: all but those of later blocks and
    the edited matrix itself (and the final norm / LM head, which come after every block)."""
    spec = spec_for(model)
    edited = spec.mlp_out_at(layer) + "."
    later = tuple(f"{spec.layer(j)}." for j in range(layer + 1, len(model.get_submodule(spec.layers))))
    tail = (spec.final_norm + ".", spec.lm_head + ".")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(later) or name.startswith(edited) or name.startswith(tail):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


def describe(model: nn.Module, layer: int, corpus: Corpus, dtype: str) -> dict:
    return {"kind": "mom2", "family": spec_for(model).family, "layer": layer, "weights": upstream_hash(model, layer),
            "corpus": corpus.sha256, "tokens": corpus.tokens, "dtype": dtype, "version": 1}


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _length_order(seqs: list[list[int]]) -> list[int]:
    """Indices of ``seqs`` by length (stable): the order the statistics pass batches them in, for less padding."""
    return sorted(range(len(seqs)), key=lambda i: len(seqs[i]))


@torch.no_grad()
def compute_second_moments(model: nn.Module, layers: list[int], corpus: Corpus, dtype: str = "float32",
                           batch_size: int = 64, progress: Progress | None = None) -> dict[int, tuple[torch.Tensor, int]]:
    """One streaming pass over ``corpus``: for each layer, (Σ k kᵀ in float64, number of keys)."""
    for i in layers:
        edit_matrix(model, i)  # checks the layer index
    paths = {i: spec_for(model).mlp_out_at(i) for i in layers}
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    count = 0
    seqs = _length_order(corpus.sequences)
    pad = 0
    was_training = model.training
    model.eval()
    autocast = dtype in ("float16", "bfloat16")
    try:
        for b in range(0, len(seqs), batch_size):
            chunk = [corpus.sequences[i] for i in seqs[b:b + batch_size]]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), T), dtype=torch.long)
            for r, s in enumerate(chunk):  # right padding: positions of real tokens are unchanged
                ids[r, :len(s)] = torch.tensor(s)
                att[r, :len(s)] = 1
            # the pass ends at the highest layer's MLP: nothing above it (nor the logits) changes a key
            with Trace(model, paths.values(), retain_input=True, retain_output=False) as tr, \
                    stop_after(model, paths[max(layers)]):
                with torch.autocast(device.type, dtype=_DTYPES[dtype], enabled=autocast):
                    try:
                        model(input_ids=ids.to(device), attention_mask=att.to(device))
                    except StopForward:
                        pass
            mask = att.bool().to(device)
            for i in layers:
                k = tr[paths[i]].input[mask].float()  # (N, d_k) keys of real tokens only
                s = (k.T @ k).double()  # (d_k, d_k); float32 product per batch, float64 across batches
                sums[i] = s if i not in sums else sums[i] + s
            count += int(mask.sum())
            if progress:
                progress(min(b + batch_size, len(seqs)), len(seqs))
    finally:
        model.train(was_training)
    return {i: (sums[i], count) for i in layers}


def second_moments(model: nn.Module, layers: list[int], corpus: Corpus, store: Cache, dtype: str = "float32",
                   progress: Progress | None = None) -> dict[int, torch.Tensor]:
    """C for each layer; the layers missing from the cache are computed together in one pass."""
    out: dict[int, torch.Tensor] = {}
    descs = {i: describe(model, i, corpus, dtype) for i in layers}
    for i in layers:
        hit = store.get_tensors("stats", descs[i])
        if hit is not None:
            out[i] = hit["mom2"]
    todo = [i for i in layers if i not in out]
    if todo:
        t0 = time.perf_counter()
        sums = compute_second_moments(model, todo, corpus, dtype, progress=progress)
        for i, (s, n) in sums.items():
            out[i] = (s / n).cpu()  # on the CPU, as a cache hit is: the solves run there in float64
            cache_second_moment(store, descs[i], out[i], n)
        log.info("statistics of layers %s over %d tokens in %.1f s", todo, corpus.tokens, time.perf_counter() - t0)
    return out


def cache_second_moment(store: Cache, description: dict, C: torch.Tensor, count: int) -> None:
    """Write C under ``description`` (from :func:`describe`) as :func:`second_moments` reads it back, whichever
    process or cluster computed it."""
    store.put_tensors("stats", description, {"mom2": C, "count": torch.tensor(count)})


def shard_corpus(corpus: Corpus, shard: int, n_shards: int, batch_size: int = 64) -> Corpus:
    """Shard ``shard`` of ``n_shards``: the batches ``shard``, ``shard + n_shards``, ... of the length-sorted
    order that :func:`compute_second_moments` walks.

    Whole batches, so that every batch holds the same sequences (and the same padding) as in the single pass:
    its float32 product k kᵀ is then the same, and only the float64 additions across batches are grouped
    differently. The sequences stay in sorted order, so the shard's own pass batches them the same way again.
    Round-robin rather than contiguous ranges, so every shard gets a like share of short and long sequences.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: expected n_shards >= 1 and 0 <= shard < n_shards")
    order = _length_order(corpus.sequences)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    seqs = [corpus.sequences[i] for batch in batches[shard::n_shards] for i in batch]
    return Corpus(f"{corpus.name}[shard {shard}/{n_shards}]", seqs, _hash_sequences(seqs))


def shard_second_moments(model: nn.Module, layers: list[int], corpus: Corpus, shard: int, n_shards: int,
                         dtype: str = "float32", batch_size: int = 64) -> dict[int, tuple[torch.Tensor, int]]:
    """(Σ k kᵀ in float64, number of keys) of each layer over one shard of ``corpus`` (:func:`shard_corpus`).

    ``batch_size`` must be the one the single pass would use for the batches to match. A shard left without
    batches (more shards than batches) contributes zeros, so a fixed shard count fits any corpus.
    """
    part = shard_corpus(corpus, shard, n_shards, batch_size)
    if part.sequences:
        return compute_second_moments(model, layers, part, dtype, batch_size)
    device = next(model.parameters()).device
    return {i: (torch.zeros(key_size(model, i), key_size(model, i), dtype=torch.float64, device=device), 0)
            for i in layers}  # (d_k, d_k) each


def combine_shards(parts: list[dict[int, tuple[torch.Tensor, int]]]) -> dict[int, torch.Tensor]:
    """C = E[k kᵀ] (float64, on the CPU, as :func:`second_moments` stores it) of each layer from the shards' sums.

    The shards add in float64 the same float32 batch products the single pass adds, grouped differently. A
    product has 24 significant bits, so float64 leaves ~29 bits of room and the additions are usually exact:
    C is then bit-equal to the single pass's (as in the tests); otherwise it is within a few ulp.
    """
    if not parts:
        raise ValueError("no shards to combine")
    layers = sorted(parts[0])
    for n, p in enumerate(parts):
        if sorted(p) != layers:
            raise ValueError(f"shard {n}: layers {sorted(p)}, expected those of shard 0: {layers}")
    out: dict[int, torch.Tensor] = {}
    for i in layers:
        count = sum(p[i][1] for p in parts)
        if count == 0:
            raise ValueError(f"layer {i}: the shards hold no keys")
        total = parts[0][i][0].double().cpu()  # (d_k, d_k)
        for p in parts[1:]:
            total = total + p[i][0].double().cpu()
        out[i] = total / count
    return out
