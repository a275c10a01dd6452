"""Covariance statistics in shards over a Dask cluster: the scale-out path of ``factsmith stats``.

    sharded_stats(Path("/data/factsmith/models/gpt-j-6b"), layers=[3, 4, 5, 6, 7, 8], n_shards=16,
                  address="tcp://dask-scheduler:8786")

One pass over a 100k-sample corpus through GPT-J is hours on one device; the sum Σ k kᵀ splits into
independent shards. ``plan_stats`` builds the corpus once (the same one ``stats_corpus`` builds for an
edit) and looks up the cache; each shard is a mapped task that loads the model itself and returns its
float64 sums (``editing.stats.shard_second_moments``); ``store_stats`` adds them up
(``combine_shards``) and writes C under the descriptors ``second_moments`` reads, so the next edit of
that model finds them in the cache.

The tasks run on a ``prefect_dask.DaskTaskRunner``: a temporary local cluster (one single-threaded
worker process a shard, up to the CPU count) or an existing scheduler at ``address``. Workers need the
model directory and the cache directory at the same paths as the flow (a shared volume): the shards
read the weights, and ``store_stats`` writes the cache entry. Each shard checks that the weights it
loaded hash to the plan's, so a node with a stale copy fails instead of mixing two models' keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from editing import hparams as H
from editing.arch import key_size
from editing.engine import edit_layers, stats_corpus
from editing.modeldir import load as load_model
from editing.modeldir import model_corpus
from editing.stats import (Corpus, cache_second_moment, combine_shards, describe, shard_second_moments,
                           upstream_hash)
from editing.store import Cache
from flows import settings


@dataclass(frozen=True)
class StatsPlan:
    """What every shard computes and where the result goes; built once, shipped to the shards by Dask."""

    corpus: Corpus
    dtype: str  # forward-pass dtype (hparams stats.mom2_dtype); sums are float64 regardless
    layers: list[int]  # the layers asked for
    todo: list[int]  # those not in the cache yet
    descriptions: dict[int, dict[str, Any]]  # each layer's cache key (editing.stats.describe)


# Results move between tasks through Dask, and the cache is the editing Cache: Prefect neither hashes
# the inputs (a corpus, d_k x d_k tensors) nor persists the results.
_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**_TASK)
def plan_stats(model_dir: Path, layers: list[int] | None, corpus_files: list[Path] | None, samples: int | None,
               tokens: int | None, method: str | None, hparams_file: Path | None, cache_root: Path) -> StatsPlan:
    """The corpus and the cache keys, chosen as ``factsmith stats`` chooses them (hparams of the model's family,
    the model directory's own corpus file, else model samples), and which layers the cache lacks."""
    model, tok = load_model(model_dir)
    hp, _ = H.resolve(method, hparams_file, model_dir, model)
    changes = {k: v for k, v in (("stats__mom2_samples", samples), ("stats__sample_tokens", tokens)) if v is not None}
    hp = H.with_changes(hp, **changes) if changes else hp
    wanted = sorted(set(layers)) if layers is not None else edit_layers(hp)
    for layer in wanted:
        key_size(model, layer)  # an out-of-range layer fails here, before any shard loads the model
    store = Cache(cache_root)
    corpus = stats_corpus(model, tok, hp, store, list(corpus_files) if corpus_files else model_corpus(model_dir))
    dtype = hp.stats.mom2_dtype
    descs = {i: describe(model, i, corpus, dtype) for i in wanted}
    todo = [i for i in wanted if store.get_tensors("stats", descs[i]) is None]
    return StatsPlan(corpus, dtype, wanted, todo, descs)


@task(**_TASK)
def shard_stats(model_dir: Path, plan: StatsPlan, shard: int, n_shards: int,
                device: str) -> dict[int, tuple[torch.Tensor, int]]:
    """(Σ k kᵀ, key count) of each layer to compute over shard ``shard``, on the CPU (any worker can add them)."""
    model, _ = load_model(model_dir)
    deepest = max(plan.todo)  # its upstream weights include those of every shallower layer
    if upstream_hash(model, deepest) != plan.descriptions[deepest]["weights"]:
        raise RuntimeError(f"shard {shard}: the weights at {model_dir} differ from those the plan was made from "
                           f"(up to layer {deepest}); every worker must see the same model directory")
    model.to(device)
    sums = shard_second_moments(model, plan.todo, plan.corpus, shard, n_shards, plan.dtype)
    return {i: (s.cpu(), n) for i, (s, n) in sums.items()}


@task(**_TASK, retries=2, retry_delay_seconds=5)
def store_stats(cache_root: Path, plan: StatsPlan,
                parts: list[dict[int, tuple[torch.Tensor, int]]]) -> dict[int, float]:
    """C of each computed layer written into the cache; returns each one's trace (a figure for the logs)."""
    covs = combine_shards(parts)
    store = Cache(cache_root)
    for i, C in covs.items():
        cache_second_moment(store, plan.descriptions[i], C, sum(p[i][1] for p in parts))
    return {i: float(torch.trace(C)) for i, C in covs.items()}


@flow(name="sharded-stats-shards")
def stats_shards(model_dir: Path, layers: list[int] | None, n_shards: int, corpus_files: list[Path] | None,
                 samples: int | None, tokens: int | None, method: str | None, hparams_file: Path | None, device: str,
                 cache_root: Path) -> dict[str, Any]:
    """Plan, shards, sum: every task on the task runner ``sharded_stats`` gives this flow."""
    plan = plan_stats.submit(model_dir, layers, corpus_files, samples, tokens, method, hparams_file, cache_root)
    p = plan.result()
    traces: dict[int, float] = {}
    if p.todo:
        parts = shard_stats.map(unmapped(model_dir), unmapped(plan), range(n_shards), unmapped(n_shards),
                                unmapped(device))
        traces = store_stats.submit(cache_root, plan, parts).result()
    get_run_logger().info("statistics of layers %s over %d tokens: computed %s in %d shards, cached before %s",
                          p.layers, p.corpus.tokens, p.todo, n_shards, [i for i in p.layers if i not in p.todo])
    return {"corpus": {"name": p.corpus.name, "sha256": p.corpus.sha256, "sequences": len(p.corpus.sequences),
                       "tokens": p.corpus.tokens},
            "dtype": p.dtype, "layers": p.layers, "computed": p.todo, "shards": n_shards,
            "traces": {str(i): t for i, t in traces.items()}}


@flow(name="sharded-stats")
def sharded_stats(model_dir: Path, layers: list[int] | None = None, n_shards: int = 2,
                  corpus_files: list[Path] | None = None, samples: int | None = None, tokens: int | None = None,
                  method: str | None = None, hparams_file: Path | None = None, device: str = "cpu",
                  address: str | None = None) -> dict[str, Any]:
    """C = E[k kᵀ] of ``layers`` (default: those the hparams edit) computed in ``n_shards`` shards on Dask and
    cached where an edit of the model looks for it.

    ``samples`` and ``tokens`` override the hparams' ``stats.mom2_samples`` and ``stats.sample_tokens`` (tokens
    per built-in model sample), as ``factsmith stats --samples`` does. ``address``: an existing Dask scheduler
    (``tcp://host:8786``); without one, a local cluster lives for the run. The task runner is chosen here, at
    run time, so the work itself is the subflow ``stats_shards``. The Dask workers report their task runs to
    this flow's Prefect API, so they must reach it.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards: expected at least 1, found {n_shards}")
    if address:
        runner = DaskTaskRunner(address=address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": min(n_shards, os.cpu_count() or 1),
                                                "threads_per_worker": 1, "processes": True,
                                                "dashboard_address": None})
    # Tasks take the flow's settings to the Dask workers. Without PREFECT_API_URL (the embedded default) those
    # name no API, and every worker process would start a temporary one of its own: name this flow's instead.
    api = PREFECT_API_URL.value() or str(FlowRunContext.get().client.api_url)
    with temporary_settings({PREFECT_API_URL: api}):
        return stats_shards.with_options(task_runner=runner)(
            Path(model_dir).resolve(), layers, n_shards, [Path(f).resolve() for f in corpus_files or []] or None,
            samples, tokens, method, Path(hparams_file).resolve() if hparams_file else None, device,
            settings.cache_dir().resolve())
