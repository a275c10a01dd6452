"""What every command shares: the two consoles, ``--json`` output, errors as exit codes, progress lines.

Every command takes ``--json`` and then prints exactly one JSON object on stdout (progress and messages go to
stderr). Exit codes: 0 success; 1 the command ran and failed (a gate, say); 2 bad input (the message names the
file, line and field); 3 a file that cannot be read at all (``validate``).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import typer

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.")
NameOpt = typer.Option(None, "--name", help="Registered model name (default: the only one registered).")
HooksOpt = typer.Option(None, "--hooks", help="Promotion hooks (YAML) called when the champion moves (default "
                        "FACTSMITH_HOME/hooks.yaml when present).")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREADABLE = 3


def stderr():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # never break a path or a message across lines


def promotion_hooks(path, sink: list[dict[str, Any]]):
    """The hooks of ``path`` (None: the default file), each outcome printed to stderr and added to ``sink``."""
    from dataclasses import replace

    from registry.hooks import load

    def report(event: str, d) -> None:
        sink.append({"event": event, **d.to_json()})
        if d.ok:
            stderr().print(f"hook {d.hook}: {event} delivered ({d.detail}, attempt {d.attempts})", highlight=False)
        else:
            stderr().print(f"[bold yellow]hook {d.hook}: {event} FAILED[/] after {d.attempts} attempt(s): {d.detail} "
                           f"(recorded in the ledger as hook_failed; the promotion stands)", highlight=False,
                           markup=True)

    return replace(load(path), report=report)


def stdout():
    from rich.console import Console

    return Console(soft_wrap=True)


# characters JSON may hold raw but line-oriented readers split at (Python's str.splitlines, JavaScript before
# ES2019): escaped, so that the one JSON object stays one line for every reader
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str).translate(_LINE_BREAKS) + "\n")
    sys.stdout.flush()


@contextmanager
def input_errors(as_json: bool) -> Iterator[None]:
    """Turn the packages' input errors into a clear message and exit code 2."""
    from sandbox.errors import SandboxError

    try:
        yield
    except (SandboxError, ValueError) as e:
        if as_json:
            emit_json({"ok": False, "error": str(e), "kind": type(e).__name__})
        stderr().print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        raise typer.Exit(EXIT_BAD_INPUT)


def progress_bar(console, description: str):
    """A rich progress bar fed by the trainer's progress events (loss and accuracy in the line)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(description, total=None, loss="-", acc="-", visible=False)  # shown once training starts

    def on_event(e: dict[str, Any]) -> None:
        if e["event"] == "start":
            bar.update(task, total=e["total_steps"], visible=True)
        elif e["event"] in ("step", "eval"):
            acc = "-" if e.get("accuracy") is None else f"{e['accuracy']:.1%}"
            bar.update(task, completed=e["step"], loss=f"{e['loss']:.3f}", acc=acc)

    return bar, on_event


def pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1%}"


class Phases:
    """Progress on stderr: one line per phase (spinner or bar, its own elapsed time)."""

    def __init__(self, console):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(finished_text="[green]✓[/]"),
                            TextColumn("{task.description}", markup=False), BarColumn(bar_width=20),
                            TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console)
        self.task = None

    def __enter__(self) -> "Phases":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.finish()
        self.bar.__exit__(*exc)

    def start(self, description: str, total: Optional[int] = None) -> None:
        self.finish()
        self.task = self.bar.add_task(description, total=total, count="" if total is None else f"0/{total}")

    def update(self, done: int, total: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done, total=total, count=f"{done}/{total}")

    def finish(self) -> None:
        if self.task is not None:
            t = next(t for t in self.bar.tasks if t.id == self.task)
            total = t.total if t.total is not None else 1
            self.bar.update(self.task, total=total, completed=total)
            self.bar.stop_task(self.task)
            self.task = None


def prob(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"



@contextmanager
def registry_errors(as_json: bool) -> Iterator[None]:
    """Input errors exit 2 (via :func:`_errors`); the registry's refusals (a lost race, a failed gate, a hash
    mismatch, a broken ledger) and the tracking server's (a wrong password: HTTP 401, a missing permission:
    403) exit 1 with the message."""
    from registry.errors import RegistryError

    try:
        with input_errors(as_json):
            yield
    except Exception as e:
        mlflow_error = any(c.__module__.startswith("mlflow.exceptions") for c in type(e).__mro__)
        if not isinstance(e, RegistryError) and not mlflow_error:
            raise
        msg = f"the MLflow tracking server refused: {e}" if mlflow_error else str(e)
        if as_json:
            emit_json({"ok": False, "error": msg, "kind": type(e).__name__})
        stderr().print(f"[bold red]error:[/] {msg}", highlight=False, markup=True)
        raise typer.Exit(EXIT_FAILED)


def check_method(method: Optional[str]) -> None:
    """``--method`` against the method table (editing.methods)."""
    from editing.methods import METHODS, choices

    if method is not None and method not in METHODS:
        raise ValueError(f"--method: expected {choices()}, found {method!r}")
