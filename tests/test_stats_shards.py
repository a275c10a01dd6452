"""Covariance statistics in shards: the shards' sums add up to the single pass's C, bit for bit, and the Prefect
flow on a real local Dask cluster writes that C where ``second_moments`` finds it."""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from editing import stats as S
from editing.stats import Corpus, combine_shards, compute_second_moments, shard_corpus, shard_second_moments
from editing.store import Cache

from .tiny_models import TEXTS, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.integration

LAYERS = [0, 2]
VOCAB = 300


def _random_corpus(n: int = 300, seed: int = 0) -> Corpus:
    """Sequences of 1-60 random tokens: many lengths, so the length sort and the padding matter."""
    rng = random.Random(seed)
    seqs = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 60))] for _ in range(n)]
    return Corpus("random", seqs, S._hash_sequences(seqs))


@contextmanager
def _one_thread():
    """torch on one thread, as in Dask workers (OMP_NUM_THREADS=1): float32 kernels differ in the last bits by
    thread count, and on a busy 2-core machine one thread runs these tiny models many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _single_pass_C(model, corpus: Corpus) -> dict[int, torch.Tensor]:
    """C as ``second_moments`` computes and stores it."""
    return {i: (s / n).cpu() for i, (s, n) in compute_second_moments(model, LAYERS, corpus).items()}


@_one_thread()
def test_shard_sums_add_up_to_the_single_pass_exactly(tmp_path):
    model = tiny_model("gpt2", vocab=VOCAB, init_range=0.2)
    corpus = _random_corpus()  # 5 batches of 64
    ref = _single_pass_C(model, corpus)
    tokens = corpus.tokens
    # Whole batches of the length-sorted order: every batch's float32 product is the single pass's, and the
    # float64 sums of those products are exact here, so C is equal bit for bit (not only to rounding).
    for n_shards in (1, 2, 3, 8):  # 8 > 5 batches: 3 shards are empty and contribute zeros
        parts = [shard_second_moments(model, LAYERS, corpus, k, n_shards) for k in range(n_shards)]
        assert all(sum(p[i][1] for p in parts) == tokens for i in LAYERS)
        C = combine_shards(parts)
        for i in LAYERS:
            assert C[i].dtype == torch.float64 and C[i].device.type == "cpu"
            assert torch.equal(C[i], ref[i]), (n_shards, i, (C[i] - ref[i]).abs().max())
    # every sequence lands in exactly one shard
    shards = [shard_corpus(corpus, k, 3).sequences for k in range(3)]
    assert sorted(map(tuple, sum(shards, []))) == sorted(map(tuple, corpus.sequences))
    # ... and equals what second_moments caches
    cached = S.second_moments(model, LAYERS, corpus, Cache(tmp_path))
    assert all(torch.equal(cached[i], ref[i]) for i in LAYERS)


def test_shard_arguments_are_checked():
    model = tiny_model("gpt2", vocab=VOCAB)
    corpus = _random_corpus(20)  # one batch
    with pytest.raises(ValueError, match="shard 3 of 3"):
        shard_corpus(corpus, 3, 3)
    with pytest.raises(ValueError, match="no shards"):
        combine_shards([])
    a = shard_second_moments(model, [0], corpus, 0, 1)
    b = shard_second_moments(model, [1], corpus, 0, 1)
    with pytest.raises(ValueError, match=r"shard 1: layers \[1\], expected those of shard 0: \[0\]"):
        combine_shards([a, b])


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    tiny_model("gpt2", vocab=VOCAB, init_range=0.2).save_pretrained(d)
    tiny_tokenizer(VOCAB).save_pretrained(d)
    return d


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """200 paragraphs of 1-12 sentences: 4 batches of 64, cut to the model's 64 positions."""
    rng = random.Random(1)
    paragraphs = [" ".join(rng.choice(TEXTS) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    f = tmp_path / "corpus.txt"
    f.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return f


@pytest.fixture
def prefect_api(tmp_path: Path, monkeypatch):
    """Prefect on a temporary local API with its database under ``tmp_path``, stopped after the test."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # for the processes Prefect starts
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # never a server someone configured
    # The API starts in ~10 s on an idle machine; on a busy 2-core one 90 s was seen to run out.
    startup = {PREFECT_HOME: tmp_path / "prefect", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}
    with temporary_settings(startup, restore_defaults={PREFECT_API_URL}):
        try:
            yield
        finally:
            # The temporary API outlives the flow (one a process, reused): stop this test's now rather than at
            # exit, when its goodbye goes to an output pytest has already closed.
            SubprocessASGIServer().stop()


@pytest.fixture
def dask_address(prefect_api):
    """The scheduler address of a real local Dask cluster: two single-threaded worker processes on 127.0.0.1."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        # LocalCluster gives a worker process 5 s to exit; a worker that ran Prefect tasks first sends its last
        # logs and events to the API, and on a starved 2-core machine that overran 5 s. Be patient first.
        for nanny in list(cluster.workers.values()):
            cluster.sync(nanny.close, timeout=120)
        cluster.close()


def test_flow_on_a_local_dask_cluster_fills_the_cache(model_dir, corpus_file, dask_address, tmp_path, monkeypatch):
    from editing.engine import stats_corpus
    from flows import settings
    from editing.hparams import resolve
    from editing.modeldir import load
    from flows.stats_flow import sharded_stats

    monkeypatch.setenv("FACTSMITH_HOME", str(tmp_path / "home"))
    res = sharded_stats(model_dir, layers=LAYERS, n_shards=3, corpus_files=[corpus_file], address=dask_address)
    assert res["computed"] == LAYERS and res["shards"] == 3

    model, tok = load(model_dir)
    hp, _ = resolve(None, None, model_dir, model)
    corpus = stats_corpus(model, tok, hp, Cache(None), [corpus_file])
    assert res["corpus"]["sha256"] == corpus.sha256 and len(corpus.sequences) == 200
    with _one_thread():
        ref = _single_pass_C(model, corpus)

    def no_compute(*args, **kwargs):
        raise AssertionError("second_moments recomputed statistics the flow should have cached")

    monkeypatch.setattr(S, "compute_second_moments", no_compute)
    cached = S.second_moments(model, LAYERS, corpus, Cache(settings.cache_dir()), hp.stats.mom2_dtype)
    for i in LAYERS:
        assert torch.equal(cached[i], ref[i]), (i, (cached[i] - ref[i]).abs().max())


def test_a_shard_refuses_weights_other_than_the_plans(model_dir, corpus_file, tmp_path):
    """Workers on several nodes each read the model directory: a stale copy must fail, not mix two models."""
    from flows.stats_flow import plan_stats, shard_stats

    plan = plan_stats.fn(model_dir, LAYERS, [corpus_file], None, None, None, None, tmp_path / "cache")
    assert plan.todo == LAYERS and set(plan.descriptions) == set(LAYERS)
    tiny_model("gpt2", seed=1, vocab=VOCAB, init_range=0.2).save_pretrained(model_dir)
    with pytest.raises(RuntimeError, match="differ from those the plan was made from"):
        shard_stats.fn(model_dir, plan, 0, 2, "cpu")
