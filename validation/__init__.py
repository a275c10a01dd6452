"""Intake and the release gate: what may be edited, and whether an edited model may ship.

* :mod:`~validation.requests` -- the one request model (``Request``), rows with their origin, quarantine records;
* :mod:`~validation.formats` -- parsers for native JSONL/CSV, CounterFact (both layouts), zsRE, MQuAKE;
* :mod:`~validation.expectations` -- the Great Expectations suite (imports GX: only when validating);
* :mod:`~validation.validate` -- ``validate_files``: parse, GX, conflicts; every row accepted, quarantined or
  superseded;
* :mod:`~validation.conflicts` -- requests for one fact in one batch (``reject`` | ``latest-wins``);
* :mod:`~validation.probes` -- paraphrase catalogue, neighbours, protected facts, fluency text;
* :mod:`~validation.gate` -- gate metrics and the YAML policy; :mod:`~validation.report` -- JSON, Markdown,
  HTML; :mod:`~validation.bisect` -- the largest passing subset of a failing batch.

Imports editing (to score models) and great_expectations -- never Prefect or MLflow.
"""
