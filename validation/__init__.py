"""The path of a request after it is written down: intake (what may be edited), then the gate (whether the
edited model may ship).

* :mod:`~validation.requests` -- the one request model (``Request``) from intake to the ledger, rows with their
  origin, quarantine records; ``Request.to_edit_request`` is the adapter to the editing engine;
* :mod:`~validation.intake` -- parse every format, Great Expectations, conflicts: each row accepted,
  quarantined or superseded;
* :mod:`~validation.gate` -- probes, metrics, policy, blame, reports, bisection.

Imports editing (to score models) and great_expectations -- never Prefect or MLflow.
"""
