"""Model editing: architecture table, hooks, covariance statistics, ROME, MEMIT, deltas, causal tracing.

Imports torch, transformers and safetensors only — never Prefect, MLflow or Great Expectations.
(The editing engine is issue 3.)
"""
