"""``factsmith run``, ``serve`` and ``demo``: the fact_update flow, once in-process or on a schedule, and the
newcomer's tour."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from editing.methods import DEFAULT as DEFAULT_METHOD
from editing.methods import choices as methods_choices

from .app import app
from .intake_cmd import KEEP_UNKNOWN_HELP
from .output import (EXIT_BAD_INPUT, EXIT_FAILED, HooksOpt, JsonOpt, check_method, emit_json, input_errors,
                     registry_errors, stderr, stdout)
from .sandbox_cmd import build_model


def _flow_env() -> None:
    """Prefect in-process: its temporary local API needs longer than the default 20 s to start on 2 cores;
    its database lives under FACTSMITH_HOME unless PREFECT_HOME or a PREFECT_API_URL says otherwise."""
    import os

    from flows import settings

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(settings.home() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here: it only logs errors
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@contextmanager
def _flow_settings() -> Iterator[None]:
    """:func:`_flow_env`, also in a process that imported Prefect before it (a test, a notebook, a program that
    imported flows.flow): Prefect reads the environment once, at import, and would wait its default 20 s for the
    temporary API, which a fresh Prefect database on 2 busy cores can exceed (the project's CI, 2026-12-07)."""
    import os

    _flow_env()
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP, temporary_settings

    want = max(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]), float(STARTUP.value()))
    with temporary_settings(updates={STARTUP: want}):
        yield


def _run_exit(res: dict[str, Any]) -> int:
    c = res["counts"]
    return EXIT_BAD_INPUT if c["quarantined"] or res.get("unreadable") else (EXIT_FAILED if c["rejected"] else 0)


def _print_run(res: dict[str, Any]) -> None:
    from rich.table import Table

    out = stdout()
    gate = res.get("gate")
    if gate is not None:
        t = Table(title="Gate of the registered batch", title_justify="left")
        for col in ("metric", "value", "threshold"):
            t.add_column(col)
        th, m = gate.get("thresholds") or {}, gate.get("metrics") or {}
        # reliability and generalization are what the model says (greedy); the _p rows are CounterFact's
        # p(new) > p(old), reported without a threshold
        for k in ("reliability", "reliability_p", "generalization", "generalization_p", "subject_locality", "subject_facts",
                  "locality", "protected", "kl", "perplexity_ratio", "entropy_drop", "max_norm_growth"):
            bound = th.get(k) if k.startswith("max_") else th.get(f"min_{k}", th.get(f"max_{k}"))
            side = ">=" if f"min_{k}" in th else "<="
            limit = f"{side} {bound:g}" if isinstance(bound, (int, float)) else "-"
            if not isinstance(m.get(k), (int, float)):
                if k in ("generalization", "subject_locality"):  # a suite with no probe passes unmeasured: say so
                    t.add_row(k, "not measured (no probes)", limit)
                continue
            t.add_row(k, f"{m[k]:.3f}", limit)
        out.print(t)
    t = Table(title="Requests by end state", title_justify="left")
    t.add_column("state")
    t.add_column("requests", justify="right")
    for k, n in res["counts"].items():
        t.add_row(k, str(n))
    t.add_row("already applied (skipped)", str(res["already_applied"]))
    out.print(t)
    for q in res["states"].get("quarantined", []):
        out.print(f"[yellow]quarantined[/] {q['file']} line {q['line']}: {q['reason']}", highlight=False)
    for r in res["states"].get("rejected", []):
        out.print(f"[red]rejected[/] {r['id']} ({r['subject']} -> {r['new']}): {r['reason']}", highlight=False)
    if len(res.get("versions") or ()) > 1:
        out.print(f"\nRegistered [bold]{res['model']} versions {', '.join(map(str, res['versions']))}[/] (from version "
                  f"{res['parent_version']}; each after the first holds requests the one before left out of its "
                  f"batch, edited again without the others; the last {'champion' if res.get('promoted') else 'alias candidate'}).", highlight=False)
        out.print(f"Gate report: {res['report_html']}", highlight=False)
    elif res["version"] is not None:
        out.print(f"\nRegistered [bold]{res['model']} version {res['version']}[/] (from version {res['parent_version']}; "
                  f"{'champion' if res.get('promoted') else 'alias candidate'}).", highlight=False)
        out.print(f"Gate report: {res['report_html']}", highlight=False)
    elif (res["already_applied"] or res["done_files"]) and not any(res["counts"].values()):
        what = [f"{len(res['done_files'])} file(s) already processed by an earlier run"] if res["done_files"] else []
        what += [f"{res['already_applied']} request(s) already applied"] if res["already_applied"] else []
        out.print(f"\nNothing new ({'; '.join(what)}): nothing applied twice, no version registered.")
    else:
        out.print("\nNo version registered.")
    for m in res["moved"]:
        out.print(f"moved {m['file']} -> {m['to']}", highlight=False)


@app.command()
def run(
    inbox: Path = typer.Option(..., "--inbox", help="Directory of request files (native JSONL/CSV, CounterFact, zsRE, "
                               "MQuAKE); processed files move to processed/ or quarantine/ below it."),
    model: Optional[str] = typer.Option(None, "--model", help="Registered model name (default: the only one)."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=f"{methods_choices()}."),
    policy: str = typer.Option("latest-wins", "--policy", help="Requests with different targets for one fact: "
                               "'latest-wins' keeps the latest requested_at, 'reject' quarantines them all."),
    promote: bool = typer.Option(False, "--promote", help="Make the new version champion (its gate passed)."),
    no_bisect: bool = typer.Option(False, "--no-bisect", help="Reject the whole batch when its gate fails."),
    hparams_file: Optional[Path] = typer.Option(None, "--hparams", help="Editing hyperparameters (YAML)."),
    gate_policy: Optional[Path] = typer.Option(None, "--gate-policy", help="Gate thresholds (YAML)."),
    protected: Optional[Path] = typer.Option(None, "--protected", help="Protected facts JSONL (default "
                                             "FACTSMITH_HOME/protected_facts.jsonl when present)."),
    by: Optional[str] = typer.Option(None, "--by", help="Who runs it (recorded with the run in the ledger)."),
    keep_unknown_fields: bool = typer.Option(False, "--keep-unknown-fields", help=KEEP_UNKNOWN_HELP),
    hooks: Optional[Path] = HooksOpt,
    lock_timeout: float = typer.Option(3600.0, "--lock-timeout", help="Seconds to wait while another run edits the "
                                       "same model (0: fail at once; the inbox is left as it is)."),
    follow_ups: int = typer.Option(2, "--follow-ups", help="Versions the run may register after its first for the "
                                   "requests the gate left out of its batch (for the batch's norm budget, or their own "
                                   "probes in company), each edited again on the version just registered (0: they stay "
                                   "rejected)."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the fact_update flow once, in-process: validate the inbox, edit, gate, register, move the files.

    Exit 0 when every request was applied (or already was), 1 when the gate rejected some, 2 when some rows
    were quarantined (bad input: the accepted ones are still applied)."""
    with registry_errors(as_json):
        check_method(method)
        from validation.intake.conflicts import POLICIES

        if policy not in POLICIES:
            raise ValueError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
        if not lock_timeout >= 0:
            raise ValueError(f"--lock-timeout: expected seconds >= 0, found {lock_timeout}")
        if follow_ups < 0:
            raise ValueError(f"--follow-ups: expected a count >= 0, found {follow_ups}")
        for f, what in ((hparams_file, "--hparams"), (gate_policy, "--gate-policy"), (protected, "--protected"),
                        (hooks, "--hooks")):
            if f is not None and not f.is_file():
                raise ValueError(f"{what} {f}: file not found")
        if not inbox.is_dir():
            raise ValueError(f"--inbox {inbox}: directory not found")
        res = run_pipeline(inbox, model, method=method, policy=policy, promote=promote, bisect=not no_bisect,
                           hparams_file=hparams_file, gate_policy_file=gate_policy, protected_file=protected,
                           requested_by=by, keep_unknown_fields=keep_unknown_fields, hooks_file=hooks,
                           lock_timeout=lock_timeout, follow_ups=follow_ups)
    code = _run_exit(res)
    if as_json:
        emit_json({"ok": code == 0, **res, "exit_code": code})
    else:
        _print_run(res)
    raise typer.Exit(code)


def run_pipeline(inbox: Path, model: Optional[str], **kw: Any) -> dict[str, Any]:
    """The flow in-process; the result of :func:`flows.flow.fact_update` plus the model name."""
    with _flow_settings():
        from flows.flow import fact_update
        from flows.pipeline import default_model
        from registry.store import open_store

        name = model or default_model(open_store())
        kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}
        res = fact_update(str(inbox.resolve()), name, **kw)
    return {"model": name, "promoted": bool(kw.get("promote")) and res["version"] is not None, **res}


@app.command()
def serve(
    inbox: Path = typer.Option(..., "--inbox", help="The inbox directory the scheduled runs read."),
    cron: str = typer.Option("*/15 * * * *", "--cron", help="Schedule (cron, UTC)."),
    model: Optional[str] = typer.Option(None, "--model", help="Registered model name (default: the only one)."),
    method: str = typer.Option(DEFAULT_METHOD, "--method"),
    policy: str = typer.Option("latest-wins", "--policy"),
    promote: bool = typer.Option(False, "--promote"),
    name: str = typer.Option("fact-update", "--name", help="Deployment name."),
    hooks: Optional[Path] = HooksOpt,
) -> None:
    """Serve fact_update as a scheduled deployment (needs a Prefect API: PREFECT_API_URL, or a local
    'prefect server start'); runs until interrupted."""
    with input_errors(False):
        check_method(method)
        if not inbox.is_dir():
            raise ValueError(f"--inbox {inbox}: directory not found")
        if hooks is not None:
            from registry.hooks import load

            load(hooks)  # refused now, not at the first scheduled run
        _flow_env()
        from flows.flow import fact_update
        from flows.pipeline import default_model
        from registry.store import open_store

        model_name = model or default_model(open_store())
    fact_update.serve(name=name, cron=cron, parameters={"inbox": str(inbox.resolve()), "name": model_name,
                                                         "method": method, "policy": policy, "promote": promote,
                                                         "hooks_file": str(hooks.resolve()) if hooks else None})



@app.command()
def demo(
    seed: int = typer.Option(0, "--seed", help="The demo sandbox's training seed."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=f"{methods_choices()}."),
    as_json: bool = JsonOpt,
) -> None:
    """The newcomer's tour: build (or reuse) the demo sandbox, register it as version 1 champion, and run the
    fact_update flow on the shipped inbox of 2024-2025 changes of government. A second run applies nothing
    twice."""
    import shutil
    import time

    from flows import settings
    from sandbox import example_inbox

    t0 = time.perf_counter()
    out = settings.models_dir() / "demo-sandbox"
    with registry_errors(as_json):
        check_method(method)
        result = build_model(None, out, "demo", seed, None, force=True, cache=True, quiet=as_json)
        from registry.store import open_store, tracking_uri
        from registry.versions import init

        store = open_store()
        base, created = init(out, DEMO_MODEL, store=store)
        inbox = settings.home() / "demo" / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        for f in sorted(example_inbox().glob("*.jsonl")):  # dropped again on every run: the flow is idempotent
            shutil.copy2(f, inbox / f.name)
        if not as_json:
            m = result.manifest
            stderr().print(f"demo sandbox: {out} ({'from the cache' if result.cached else 'built'}; knows "
                            f"{m['accuracy']['train']:.0%} of its facts); registered as {DEMO_MODEL!r} version "
                            f"{base.version} ({'new' if created else 'already there'}). Running fact_update on "
                            f"{inbox} ...", highlight=False)
        res = run_pipeline(inbox, DEMO_MODEL, method=method, policy="latest-wins", promote=True, bisect=True,
                           gate_policy_file=demo_gate_policy(), requested_by="factsmith demo",
                           hparams_file=demo_hparams(method))
        from flows.ask import run_answers

        res["answers"] = run_answers(res, store)  # what the base said and what the new champion says
    res.update(seconds=round(time.perf_counter() - t0, 1), sandbox=str(out), sandbox_cached=result.cached,
               tracking_uri=tracking_uri(), inbox=str(inbox))
    ui = f"mlflow ui --backend-store-uri '{tracking_uri()}'"
    if as_json:
        emit_json({"ok": True, **res, "mlflow_ui": ui})
        return
    _print_run(res)
    _print_answers(res)
    # a fact this run changed that the new champion now says (else one it applied; else one of the inbox)
    ex = next((a for a in res["answers"] if a["says_new"]), next(iter(res["answers"]), None))
    if ex is None:  # nothing applied by this run: a request of the shipped inbox
        r = json.loads(next(x for f in sorted(example_inbox().glob("*.jsonl"))
                            for x in f.read_text("utf-8").split("\n") if x.strip()))
        ex = {"subject": r["subject"], "prompt": r["prompt"].replace("{}", r["subject"])}
    prompt = ex["prompt"].replace("'", "'\\''")
    stdout().print(
        f"\nGate policy: {demo_gate_policy()}\nBrowse the registry: {ui}\nThe history of a fact: factsmith audit "
        f"--subject '{ex['subject']}'\nAsk the new champion: factsmith ask {DEMO_MODEL}@champion --prompt '{prompt}'"
        f"\nDone in {res['seconds']} s.", highlight=False)


def _print_answers(res: dict[str, Any]) -> None:
    from rich.table import Table

    rows = res.get("answers") or []
    if not rows:
        return
    said = sum(a["says_new"] for a in rows)
    t = Table(title=f"What the model says (greedy): the new champion says the new fact for {said} of {len(rows)} "
                    f"applied requests", title_justify="left")
    for col in ("request", "prompt", "new", f"before (version {res['parent_version']})",
                f"champion (version {res['version']})", "says new"):
        t.add_column(col)
    for a in rows:
        t.add_row(a["id"], a["prompt"], a["target_new"], a["base"], a["champion"],
                  "[green]yes[/]" if a["says_new"] else "[red]no[/]")
    stdout().print(t)


DEMO_MODEL = "demo"


def demo_hparams(method: str) -> Path | None:
    """The demo's hparams for ``method`` where it ships its own (sandbox/worlds/demo-memit.yaml: fewer context
    templates, and why); else the sandbox preset."""
    from sandbox import example_inbox

    path = example_inbox().parent / f"demo-{method}.yaml"
    return path if path.is_file() else None


def demo_gate_policy() -> Path:
    """The demo's gate policy (sandbox/worlds/demo-gate.yaml: why one threshold differs from the default)."""
    from sandbox import example_inbox

    return example_inbox().parent / "demo-gate.yaml"
