"""One method's edits run after run on a sandbox, as the pipeline applies them (each run's keep prompts from its
own batch, the statistics from the corpus the sandbox ships, the state carried, the edits a run replaces released),
greedy on every edit so far after each run.
Run as ``python -m tests.sequential_worker MODEL_DIR METHOD CACHE_DIR RUNS PER [--stop-on-loss] [--threads N]
[--hparams FILE] [--more-threads-when FILE]``; prints JSON (one thread unless told; two from the next run on once
FILE exists: the worker beside it has finished. A file, not a signal: a signal that reaches a worker already
shutting down, its handlers reset by the interpreter, kills it)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path


def run(model_dir: Path, method: str, cache_dir: Path, runs: int, per: int, stop_on_loss: bool = False,
        threads: int = 1, hparams: Path | None = None, more_threads_when: Path | None = None) -> list[dict]:
    import torch

    from bench import _greedy as G
    from bench.sequential import world_requests
    from editing import hparams as H, modeldir
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.store import Cache

    torch.set_num_threads(threads)
    base, tok = modeldir.load(model_dir, "cpu")
    facts = G.model_facts(model_dir)
    corpus = modeldir.model_corpus(model_dir)  # the statistics text the pipeline uses (flows.pipeline)
    raw = world_requests(model_dir, runs * per, seed=0)
    batches = [G.with_probes(raw[k * per:(k + 1) * per], facts) for k in range(runs)]
    hp = H.load(hparams, method) if hparams else H.default(method, "sandbox")
    model, state, last, done, out = copy.deepcopy(base), None, {}, [], []
    for k, batch in enumerate(batches):
        if more_threads_when is not None and more_threads_when.exists():
            torch.set_num_threads(2)  # the worker beside this one has finished: take both cores
        released = [last[r.subject] for r in batch if r.subject in last]
        res = compute_edit(model, tok, batch, hp, Cache(cache_dir), corpus_files=corpus, state=state,
                           released=released)
        apply(model, res.delta)
        state = res.state
        last.update((r.subject, r) for r in batch)
        done += batch
        said = G.greedy_says(model, tok, [r.text for r in done], [r.target_new for r in done])
        out.append({"run": k + 1, "said": {r.id: bool(s) for r, s in zip(done, said)},
                    "subject_edited_again": [r.id for r in done if last[r.subject] is not r],
                    "batch": [r.id for r in batch]})
        lost = lost_edits(out)
        if stop_on_loss and lost:
            break
    return out


def lost_edits(runs: list[dict]) -> list[str]:
    """The earlier edits the last run no longer says: said right after their own run (an edit the model never
    said is one the pipeline's gate would have rejected, not one lost), not of the last run's batch, and their
    subject not edited again since."""
    last = runs[-1]
    realised = {i for run in runs for i in run["batch"] if run["said"][i]}
    return [i for i, s in last["said"].items() if not s and i in realised and i not in last["batch"]
            and i not in last["subject_edited_again"]]


if __name__ == "__main__":
    a = sys.argv[1:]
    threads = int(a[a.index("--threads") + 1]) if "--threads" in a else 1
    hparams = Path(a[a.index("--hparams") + 1]) if "--hparams" in a else None
    flag = Path(a[a.index("--more-threads-when") + 1]) if "--more-threads-when" in a else None
    print(json.dumps(run(Path(a[0]), a[1], Path(a[2]), int(a[3]), int(a[4]), "--stop-on-loss" in a, threads, hparams,
                         flag)))
