"""A pipeline run in a process of its own, for the fault and concurrency tests of tests/test_flows.py.

    python -m tests.flow_worker INBOX NAME [--die-at gate|register|move] [--die-after S] [--lock-timeout S]
                                           [--hparams FILE]

``--die-at`` kills the process with SIGKILL (no cleanup, no ``finally``) at that point: in the gate (the edit
is computed, nothing written), right after the registry created the version (before the ledger append that
commits it), or while moving the first inbox file (after the commit). ``--die-after`` kills it S seconds after
the run starts (its imports done), wherever it is then. Prints the outcome as JSON otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path


def _die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inbox", type=Path)
    ap.add_argument("name")
    ap.add_argument("--die-at", choices=("gate", "register", "move"))
    ap.add_argument("--die-after", type=float)
    ap.add_argument("--lock-timeout", type=float, default=0.0)
    ap.add_argument("--hparams", type=Path)
    args = ap.parse_args()

    from flows import pipeline
    from registry.store import open_store

    if args.die_at == "gate":
        import validation.gate.metrics

        validation.gate.metrics.run_gate = _die
    elif args.die_at == "register":
        import registry.versions

        registry.versions.append_records = _die  # the commit point of register
    elif args.die_at == "move":
        import shutil

        shutil.move = _die
    if args.die_after is not None:
        import threading

        threading.Timer(args.die_after, _die).start()
    out = pipeline.run(pipeline.RunOptions(name=args.name, hparams_file=args.hparams), args.inbox, open_store(), lock_timeout=args.lock_timeout)
    print(json.dumps({k: v for k, v in out.to_json().items() if k != "gate"}))


if __name__ == "__main__":
    main()
