"""The pipeline and its entry points; the only package that knows Prefect.

* :mod:`~flows.pipeline` -- one run over an inbox: scan, validate, edit + gate (:mod:`~flows.attempt`: prune and
  bisect a failing batch), commit, move the files; :mod:`~flows.revert` -- a version re-derived without one
  request;
* :mod:`~flows.flow` and :mod:`~flows.stats_flow` -- the same as Prefect flows (scheduled, on a work pool, on Dask);
* :mod:`~flows.cli` -- the ``factsmith`` command line; :mod:`~flows.ask` -- what a model says;
  :mod:`~flows.settings` -- where state lives.

Nothing heavy is imported here: ``factsmith --help`` must stay fast.
"""
