"""Model editing: architecture table, hooks, covariance statistics, the editing methods, deltas, causal tracing.

Imports torch, transformers and safetensors only — never Prefect, MLflow or Great Expectations.
Modules: :mod:`~editing.arch` (the one architecture table), :mod:`~editing.hooks` (the one tracing/editing
context manager), :mod:`~editing.tokens` (subject and target positions by character offsets),
:mod:`~editing.delta` (low-rank delta artifacts: safetensors, exact revert, composition),
:mod:`~editing.hparams` (frozen hyperparameter dataclasses from YAML, shipped presets, ``resolve``),
:mod:`~editing.modeldir` (a model directory: the one loader, the edited-model writer, the file names),
:mod:`~editing.requests` (edit requests, strict native JSONL), :mod:`~editing.store` (the injected cache),
:mod:`~editing.context` (context prefixes sampled from the model), :mod:`~editing.stats` (covariance
statistics C = E[k kᵀ]), :mod:`~editing.targets` (keys and batched target vectors), :mod:`~editing.methods`
(the method table: ROME, MEMIT), :mod:`~editing.engine` (``compute_edit``, the one entry point),
:mod:`~editing.score` (target log-probabilities) and :mod:`~editing.locate` (causal tracing).
"""
