"""``factsmith serve-model``: answer with a registered version over HTTP and follow its alias."""

from __future__ import annotations

import typer

from .app import app
from .output import registry_errors


@app.command("serve-model")
def serve_model(
    ref: str = typer.Argument(..., help="The version to serve and follow: NAME@alias (e.g. demo@champion) or NAME/3."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    poll: float = typer.Option(2.0, "--poll", help="Seconds between checks of what the alias names."),
) -> None:
    """Serve a registered version over HTTP (OpenAI-compatible POST /v1/completions, greedy; GET /v1/models;
    GET /health) and follow its alias: when it moves (promotion, rollback) the new version is loaded beside the
    old and swapped in, requests in flight finish on the old weights. POST /admin/reload checks at once; it needs
    'Authorization: Bearer $FACTSMITH_ADMIN_TOKEN' (disabled when that variable is unset)."""
    with registry_errors(False):
        if poll <= 0:
            raise ValueError(f"--poll: expected seconds > 0, found {poll}")
        if not 0 < port < 65536:
            raise ValueError(f"--port: expected 1-65535, found {port}")
        from flows.serving import ModelServer, create_app

        server = ModelServer(ref, poll_s=poll)
    import uvicorn

    m = server.current
    print(f"serving {m.name} version {m.version} (weights {m.weights_sha256[:12]}…) on http://{host}:{port}, "
          f"following {ref}", flush=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
