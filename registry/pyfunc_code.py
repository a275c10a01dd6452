"""The MLflow pyfunc of a registered factsmith version, as *models from code*: MLflow runs this file to build the
model (nothing pickled). ``load_context`` rebuilds the version's weights from the registry -- the version whose
``weights_sha256`` the MLmodel's config names, verified against it -- and ``predict`` answers each prompt with
its greedy completion::

    mlflow.pyfunc.load_model("models:/demo@champion").predict(["The capital of France is"])
    mlflow models serve -m "models:/demo@champion" --env-manager local   # POST /invocations {"inputs": [...]}

The registry is the one ``MLFLOW_TRACKING_URI`` (or ``FACTSMITH_HOME``) names, as for every factsmith command.
Params: ``max_tokens`` (default 16), ``stop`` (a string).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class FactsmithVersion(PythonModel):
    # predict is untyped on purpose (typed, MLflow drops the params the signature names: max_tokens, stop); this
    # skips MLflow's type-hint wrapper, which would warn at every registration that predict has no type hints
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from registry.lineage import rebuild
        from registry.store import all_versions, open_store

        cfg = context.model_config or {}
        name, sha = cfg.get("name"), cfg.get("weights_sha256")
        if not name or not sha:
            raise ValueError(f"factsmith pyfunc: expected 'name' and 'weights_sha256' in the model's config, found {cfg}")
        store = open_store()
        versions = [int(mv.version) for mv in all_versions(store.client(), name)
                    if (mv.tags or {}).get("weights_sha256") == sha]
        if not versions:
            raise LookupError(f"factsmith pyfunc: no version of {name!r} in {store.uri} has weights {sha}")
        self.model, self.tokenizer, self.info = rebuild(name, versions[0], store)  # verified against sha
        self.model.eval()

    # no type hints: MLflow would infer a signature from them without params, and drop max_tokens and stop
    def predict(self, context, model_input, params=None):
        from editing.generate import greedy_complete

        params = params or {}
        prompts = _prompts(model_input)
        stop = [params["stop"]] if params.get("stop") else []
        return [greedy_complete(self.model, self.tokenizer, p, int(params.get("max_tokens", 16)), stop)[0]
                for p in prompts]


def _prompts(model_input: Any) -> list[str]:
    """Prompts from what MLflow hands over: a list of strings, a DataFrame (column ``prompt``, or its first),
    or records with a ``prompt``."""
    if hasattr(model_input, "columns"):  # pandas
        col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[col].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [x["prompt"] if isinstance(x, dict) else str(x) for x in model_input]


mlflow.models.set_model(FactsmithVersion())
