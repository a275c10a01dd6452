"""The Typer application and its command groups; the commands register themselves on these."""

from __future__ import annotations

import typer

from .output import JsonOpt, emit_json

app = typer.Typer(
    name="factsmith",
    help="Keep the facts of deployed language models current, safely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(help="Build and inspect sandbox fact models.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
registry_app = typer.Typer(help="The model registry: register base models and edits (MLflow).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print factsmith's version."""
    from importlib.metadata import version as v

    ver = v("factsmith")
    emit_json({"factsmith": ver}) if as_json else print(f"factsmith {ver}")
