"""Intake: request files parsed (every format), checked with Great Expectations, conflicts resolved; every row
accepted, quarantined with its reason, or superseded.

* :mod:`~validation.intake.formats` -- parsers for native JSONL/CSV, CounterFact (both layouts), zsRE, MQuAKE;
* :mod:`~validation.intake.expectations` -- the Great Expectations suite (imports GX: only when validating);
* :mod:`~validation.intake.conflicts` -- requests for one fact in one batch (``reject`` | ``latest-wins``);
* :mod:`~validation.intake.validate` -- ``validate_files`` (the three together) and ``read_requests`` (a file
  any bad row of which is an error).
"""
