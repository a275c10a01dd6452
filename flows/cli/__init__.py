"""The ``factsmith`` command line: one module a group of commands, over :mod:`flows.cli.output`.

* :mod:`~flows.cli.sandbox_cmd`: ``sandbox build | world | ask | show``, ``ask``;
* :mod:`~flows.cli.edit_cmd`: ``edit``, ``stats``, ``locate``;
* :mod:`~flows.cli.intake_cmd`: ``validate``, ``gate``;
* :mod:`~flows.cli.registry_cmd`: ``registry init | register``, ``versions``, ``promote``, ``audit``, ``diff``,
  ``rollback``;
* :mod:`~flows.cli.registry_cmd`: also ``export``;
* :mod:`~flows.cli.run_cmd`: ``run``, ``serve``, ``demo``;
* :mod:`~flows.cli.serve_cmd`: ``serve-model``.

The commands hold no logic another entry point needs: that lives in the packages below (editing, validation,
registry, sandbox, flows.pipeline). Heavy libraries (torch, Prefect, MLflow, Great Expectations) are imported
inside the commands that need them, so ``factsmith --help`` stays fast. Output and exit codes:
:mod:`flows.cli.output`.
"""

from __future__ import annotations

from .app import app

# importing a command module registers its commands, in this order in --help
from . import sandbox_cmd, edit_cmd, intake_cmd, run_cmd, registry_cmd, serve_cmd  # noqa: E402,F401,I001


def main() -> None:
    app()


__all__ = ["app", "main"]
