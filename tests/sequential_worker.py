"""One method's edits run after run on a sandbox, as the pipeline applies them (each run's keep prompts from its
own batch, the state carried, the edits a run replaces released), greedy on every edit so far after each run.
Run as ``python -m tests.sequential_worker MODEL_DIR METHOD CACHE_DIR RUNS PER [--stop-on-loss]``; prints JSON.
The lifelong test runs one process per method side by side (one thread each)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path


def run(model_dir: Path, method: str, cache_dir: Path, runs: int, per: int, stop_on_loss: bool = False) -> list[dict]:
    import torch

    from bench import _greedy as G
    from bench.sequential import world_requests
    from editing import hparams as H, modeldir
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.store import Cache

    torch.set_num_threads(1)
    import signal

    # SIGUSR1: the other worker beside this one has finished, take both cores
    signal.signal(signal.SIGUSR1, lambda *_: torch.set_num_threads(2))
    base, tok = modeldir.load(model_dir, "cpu")
    facts = G.model_facts(model_dir)
    raw = world_requests(model_dir, runs * per, seed=0)
    batches = [G.with_probes(raw[k * per:(k + 1) * per], facts) for k in range(runs)]
    hp = H.default(method, "sandbox")
    model, state, last, done, out = copy.deepcopy(base), None, {}, [], []
    for k, batch in enumerate(batches):
        released = [last[r.subject] for r in batch if r.subject in last]
        res = compute_edit(model, tok, batch, hp, Cache(cache_dir), state=state, released=released)
        apply(model, res.delta)
        state = res.state
        last.update((r.subject, r) for r in batch)
        done += batch
        said = G.greedy_says(model, tok, [r.text for r in done], [r.target_new for r in done])
        out.append({"run": k + 1, "said": {r.id: bool(s) for r, s in zip(done, said)},
                    "subject_edited_again": [r.id for r in done if last[r.subject] is not r],
                    "batch": [r.id for r in batch]})
        lost = [i for i, s in out[-1]["said"].items() if not s and i not in out[-1]["subject_edited_again"]
                and i not in out[-1]["batch"]]
        if stop_on_loss and lost:
            break
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(run(Path(a[0]), a[1], Path(a[2]), int(a[3]), int(a[4]), "--stop-on-loss" in a)))
