"""Model editing: architecture table, hooks, covariance statistics, ROME, MEMIT, deltas, causal tracing.

Imports torch, transformers and safetensors only — never Prefect, MLflow or Great Expectations.
Landed so far (issue 3 in progress): :mod:`editing.arch` (the one architecture table) and
:mod:`editing.hooks` (the one tracing/editing context manager), :mod:`editing.tokens` (subject and
target positions by character offsets, safe with BOS-adding tokenizers), :mod:`editing.delta` (low-rank
delta artifacts: safetensors, exact revert, composition).
"""
