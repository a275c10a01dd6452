"""MLflow model versions with lineage, the tamper-evident ledger, audit and exact rollback (issue 5).

* :mod:`~registry.store` -- where the registry lives: the embedded sqlite store under FACTSMITH_HOME (schema
  created once, under a file lock) or any ``MLFLOW_TRACKING_URI``; the locks;
* :mod:`~registry.refs` -- model names (validated before they touch a path) and ``NAME@alias`` / ``NAME/3``;
* :mod:`~registry.weights` -- weights patches (the changed tensors in full, safetensors) and reconstruction;
* :mod:`~registry.lineage` -- ``resolve``, ``lineage``, ``load_model`` (bit-exact, hash-verified), facts in effect;
* :mod:`~registry.versions` -- ``init``, ``register``, ``promote``, ``rollback_to``, ``record``, ``versions``;
* :mod:`~registry.revert` -- ``revert_request``: the newest version re-derived without one request, gated;
* :mod:`~registry.ledger` -- the append-only, hash-chained JSONL of every request and state change;
* :mod:`~registry.audit` -- the history of each fact across versions, and the facts two versions disagree on.

Imports mlflow (inside functions: it costs 3 s), torch, transformers, safetensors, editing and validation
(to recompute and gate a revert) -- never Prefect.
"""
