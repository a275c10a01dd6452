"""``fact_update``: the Prefect 3 flow over :mod:`flows.pipeline` (the logic lives there; this is wiring).

    scan inbox (I/O, retried) -> validate + dedupe -> edit, gate, bisect -> commit (register + ledger)
      -> move files (I/O, retried) -> markdown and table artifacts

Run in-process with ``factsmith run`` (Prefect starts a temporary local API on the first flow call: 15-25 s
on 2 cores), served on a schedule with ``factsmith serve``, or deployed into a work pool from
``prefect.yaml``.

Why not ``prefect.transactions.transaction`` with rollback hooks: the failure that matters is a worker killed
mid-run (kill -9, OOM, a pre-empted node), and no hook runs then. The run is made atomic where it can be:
nothing is written to the registry or the ledger before the commit task, whose single ledger append is the
commit point (a version created by a registration that died before it is withdrawn by the next change);
files leave the inbox only after the commit, and a file whose content a committed run already processed is
only moved, never applied again. Retries are on the I/O tasks only: a retried edit would recompute minutes of
work for the same answer, and a retried commit must not register twice (the registry would refuse it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from editing.methods import DEFAULT as DEFAULT_METHOD
from flows import attempt, pipeline


@task(name="scan-inbox", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def scan_inbox(inbox: Path, name: str) -> list[pipeline.InboxFile]:
    files = pipeline.scan(inbox, name)
    get_run_logger().info("inbox %s: %d file(s), %d already processed by a committed run", inbox, len(files),
                          sum(f.done_by is not None for f in files))
    return files


@task(name="validate", cache_policy=NO_CACHE)
def validate(files: list[pipeline.InboxFile], options: pipeline.RunOptions, parent_version: int, store) -> pipeline.Intake:
    from flows import settings

    intake = pipeline.ingest(files, options.name, parent_version, options.policy, store,
                      docs_dir=settings.home() / "validation" / "docs", keep_unknown_fields=options.keep_unknown_fields)
    get_run_logger().info("validated: %d to edit, %d already applied, %d quarantined, %d superseded",
                          len(intake.todo), len(intake.already), len(intake.quarantined), len(intake.superseded))
    return intake


@task(name="edit-gate-bisect", cache_policy=NO_CACHE)
def edit_gate_bisect(ws: attempt.Workspace, requests: list[Any], bisect: bool):
    from flows import settings

    log = get_run_logger()

    def on_attempt(a: attempt.Attempt) -> None:
        m = a.report.metrics
        failed = "; ".join(f"{f['metric']} {f['value']:.3f} vs {f['threshold']:g}" for f in a.report.failures)
        def val(k: str) -> str:
            return "not measured" if m.get(k) is None else f"{m[k]:.2f}"

        log.info("edit of %d request(s): gate %s (reliability %s, generalization %s, locality %s) "
                 "in %.1f s + %.1f s", len(a.requests), f"FAILED: {failed}" if failed else "passed",
                 val("reliability"), val("generalization"), val("locality"), a.timings["edit"], a.timings["gate"])

    return attempt.edit_gate_bisect(ws, requests, settings.cache_dir(), bisect=bisect, on_attempt=on_attempt)


@task(name="commit", cache_policy=NO_CACHE)
def commit(options: pipeline.RunOptions, ws, intake: pipeline.Intake, attempt, rejected: dict[str, str], store,
           flow_run: str | None, final: bool = True, applied_before: list[tuple[Any, int]] = ()):
    return pipeline.commit(options, ws, intake, attempt, rejected, store, flow_run, final=final,
                           applied_before=applied_before)


@task(name="move-files", retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def move_files(intake: pipeline.Intake, inbox: Path) -> list[dict[str, str]]:
    return pipeline.move_files(intake, inbox)


@task(name="publish", cache_policy=NO_CACHE)
def publish(options: pipeline.RunOptions, outcome: pipeline.Outcome) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from registry.store import tracking_uri

    key = "fact-update-" + re.sub(r"[^a-z0-9-]+", "-", options.name.lower()).strip("-")
    c = outcome.counts()
    lines = [f"# fact_update: {options.name}", ""]
    if len(outcome.versions) > 1:
        lines += [f"Registered **versions {', '.join(map(str, outcome.versions))}** of `{options.name}` (from version "
                  f"{outcome.parent_version}; each after the first holds requests the one before left out of its batch, "
                  f"edited again without the others) in MLflow at `{tracking_uri()}`"
                  + (", the last promoted to champion." if options.promote else ", the last with alias `candidate`."),
                  "", f"Gate report: [{outcome.report_html}]({Path(outcome.report_html).as_uri()})"
                  if outcome.report_html else ""]
    elif outcome.version is not None:
        lines += [f"Registered **version {outcome.version}** of `{options.name}` (from version "
                  f"{outcome.parent_version}) in MLflow at `{tracking_uri()}`"
                  + (", promoted to champion." if options.promote else " with alias `candidate`."), "",
                  f"Gate report: [{outcome.report_html}]({Path(outcome.report_html).as_uri()})" if outcome.report_html
                  else ""]
    else:
        lines += ["No version registered: nothing passed the gate or nothing was left to apply."]
    lines += ["", "| state | requests |", "|---|---|"] + [f"| {s} | {n} |" for s, n in c.items()]
    lines += [f"| already applied (skipped) | {len(outcome.already_applied)} |"]
    if outcome.gate is not None:
        m = outcome.gate.metrics
        lines += ["", "| gate metric | value |", "|---|---|"] + [
            f"| {k} | {m[k]:.3f} |" for k in ("reliability", "generalization", "locality", "protected")
            if isinstance(m.get(k), (int, float))]
    create_markdown_artifact("\n".join(lines), key=key, description=f"fact_update of {options.name}")
    rows = [{"state": s, **{k: str(v) for k, v in row.items()}} for s, xs in outcome.states.items() for row in xs]
    if rows:
        create_table_artifact(rows, key=key + "-requests", description="each request's end state")


@flow(name="fact_update", log_prints=True)
def fact_update(inbox: str, name: str | None = None, method: str = DEFAULT_METHOD, policy: str = "latest-wins",
                promote: bool = False, bisect: bool = True, hparams_file: str | None = None,
                gate_policy_file: str | None = None, protected_file: str | None = None,
                requested_by: str | None = None, keep_unknown_fields: bool = False,
                hooks_file: str | None = None, lock_timeout: float = 3600.0, follow_ups: int = 2) -> dict[str, Any]:
    """Apply an inbox of fact-change requests to a registered model; returns :meth:`Outcome.to_json`."""
    from prefect.runtime import flow_run

    from registry.store import open_store

    store = open_store()
    name = name or pipeline.default_model(store)
    options = pipeline.RunOptions(name=name, method=method, policy=policy, promote=promote, bisect=bisect,
                           hparams_file=Path(hparams_file) if hparams_file else None,
                           gate_policy_file=Path(gate_policy_file) if gate_policy_file else None,
                           protected_file=Path(protected_file) if protected_file else None, requested_by=requested_by,
                           keep_unknown_fields=keep_unknown_fields,
                           hooks_file=Path(hooks_file) if hooks_file else None, follow_ups=follow_ups)
    outcome = pipeline.run(options, Path(inbox), store, flow_run=str(flow_run.id) if flow_run.id else None, tasks=TASKS,
                           lock_timeout=lock_timeout)  # another run on this model: wait for it
    publish(options, outcome)
    return outcome.to_json()


TASKS = pipeline.Tasks(scan_inbox=scan_inbox, validate=validate, edit_gate_bisect=edit_gate_bisect, commit=commit,
                move_files=move_files)
