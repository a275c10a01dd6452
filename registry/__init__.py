"""MLflow model versions with lineage, the tamper-evident ledger, audit and exact rollback: storage only.

* :mod:`~registry.store` -- where the registry lives: the embedded sqlite store under FACTSMITH_HOME (schema
  created once, under a file lock) or any ``MLFLOW_TRACKING_URI``; the locks;
* :mod:`~registry.refs` -- model names (validated before they touch a path) and ``NAME@alias`` / ``NAME/3``;
* :mod:`~registry.weights` -- weights patches (the changed tensors in full, safetensors) and reconstruction;
* :mod:`~registry.lineage` -- ``resolve``, ``lineage``, ``load_model`` (bit-exact, hash-verified), ``checkout``
  (a version's weights, tokenizer, lineage and base directory, for more work), the edits a version recorded,
  facts in effect;
* :mod:`~registry.versions` -- ``init``, ``register``, ``promote``, ``rollback_to``, ``record``, ``versions``;
* :mod:`~registry.ledger` -- the append-only, hash-chained JSONL of every request and state change;
* :mod:`~registry.audit` -- the history of each fact across versions, and the facts two versions disagree on.

Imports mlflow (inside functions: it costs 3 s), torch, transformers, safetensors, editing (weights hashes,
deltas, the model loader) and validation (the request type of the ledger) -- never Prefect. Computing and
gating edits (the pipeline, a revert) is :mod:`flows`'s.
"""
