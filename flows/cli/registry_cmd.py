"""``factsmith registry init | register``, ``versions``, ``promote``, ``audit``, ``diff``, ``rollback``: the
model registry, its ledger and its history."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, registry_app
from .intake_cmd import protected_facts_file
from .output import EXIT_FAILED, HooksOpt, JsonOpt, NameOpt, emit_json, promotion_hooks, registry_errors, stdout




def _registry_name(store, name: Optional[str]) -> str:
    from registry.store import default_name

    return default_name(store.client(), name, "--name")


def _print_versions(infos, title: str) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("v", "kind", "from", "aliases", "method", "reqs", "gate", "sha256", "created (UTC)"):
        t.add_column(col, no_wrap=col in ("v", "kind", "gate", "sha256"))
    for i in infos:
        gate = "-" if i.gate_passed is None else ("passed" if i.gate_passed else "FAILED")
        t.add_row(str(i.version), i.kind, str(i.parent_version or "-"), ", ".join(i.aliases) or "-", i.method or "-",
                  str(i.n_requests), gate, i.weights_sha256[:10], i.created_at[:16].replace("T", " "),
                  style="bold red" if i.gate_passed is False else None)
    stdout().print(t)


@registry_app.command("init")
def registry_init(
    model_dir: Path = typer.Option(..., "--model", help="Base model: a Hugging Face directory with safetensors."),
    name: str = typer.Option(..., "--name", help="Registered model name (letters, digits, '.', '_', '-')."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a base model as version 1 with alias champion (idempotent for the same weights)."""
    with registry_errors(as_json):
        from registry.store import open_store
        from registry.versions import init

        store = open_store()
        info, created = init(model_dir, name, store=store)
    res = {"ok": True, "created": created, "tracking_uri": store.uri, **info.to_json()}
    if as_json:
        emit_json(res)
        return
    verb = "registered" if created else "already registered:"
    print(f"{verb} {info.name} version {info.version} (weights {info.weights_sha256[:12]}…, aliases "
          f"{', '.join(info.aliases)}) in {store.uri}")


@registry_app.command("register")
def registry_register(
    model_dir: Path = typer.Option(..., "--model", help="The edited model: the --out directory of 'factsmith edit' "
                                   "(weights, delta.safetensors, edit.json)."),
    report: Path = typer.Option(..., "--report", help="The gate report directory ('factsmith gate --report')."),
    parent: int = typer.Option(..., "--parent", help="The version the edit was computed on."),
    expect_newest: Optional[int] = typer.Option(None, "--expect-newest", help="The version you saw as the newest "
                                                "(default: --parent); refused (exit 1) if another was registered since."),
    name: Optional[str] = NameOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register an edited, gated model as a new version with alias candidate."""
    with registry_errors(as_json):
        from registry.store import open_store
        from registry.versions import register

        store = open_store()
        info = register(_registry_name(store, name), parent, model_dir, reports_dir=report,
                        expected_latest=expect_newest, store=store)
    if as_json:
        emit_json({"ok": True, **info.to_json()})
        return
    print(f"registered {info.name} version {info.version} from version {parent} "
          f"(gate {'passed' if info.gate_passed else 'FAILED'}; aliases {', '.join(info.aliases)})")


@app.command()
def versions(name: Optional[str] = NameOpt, as_json: bool = JsonOpt) -> None:
    """List the versions of a registered model with lineage, aliases and gate results."""
    with registry_errors(as_json):
        from registry.store import open_store
        from registry.versions import versions as list_versions

        store = open_store()
        nm = _registry_name(store, name)
        infos = list_versions(nm, store)
    if as_json:
        emit_json({"ok": True, "name": nm, "versions": [i.to_json() for i in infos]})
        return
    _print_versions(infos, f"{nm} ({store.uri})")


@app.command()
def promote(
    version: int = typer.Argument(..., help="The version to make champion."),
    name: Optional[str] = NameOpt,
    by: Optional[str] = typer.Option(None, "--by", help="Who promotes (recorded in the ledger)."),
    hooks: Optional[Path] = HooksOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move alias champion to VERSION; refused (exit 1) when its gate failed. Then calls the promotion hooks
    (a hook that fails is recorded as hook_failed; the promotion stands)."""
    delivered: list = []
    with registry_errors(as_json):
        from registry.store import open_store
        from registry.versions import promote as do_promote

        hk = promotion_hooks(hooks, delivered)
        store = open_store()
        info = do_promote(_registry_name(store, name), version, requested_by=by, store=store, hooks=hk)
    if as_json:
        emit_json({"ok": True, **info.to_json(), "hooks": delivered})
        return
    print(f"{info.name}: champion is now version {info.version}")


@app.command()
def audit(
    name: Optional[str] = NameOpt,
    subject: Optional[str] = typer.Option(None, "--subject", help="Only the facts about this subject."),
    verify: bool = typer.Option(False, "--verify", help="Check the ledger's hash chain (exit 1 when broken)."),
    as_json: bool = JsonOpt,
) -> None:
    """The history of each fact across versions, from the ledger; --verify checks it is untampered."""
    with registry_errors(as_json):
        from registry import audit as A
        from registry.store import open_store

        store = open_store()
        nm = _registry_name(store, name)
        facts = A.history(nm, subject)
        events = A.events(nm)
        check = A.verify(nm, store) if verify else None
    ok = check is None or check.ok
    if as_json:
        emit_json({"ok": ok, "name": nm, "facts": facts, "events": events,
                   "verify": check.to_json() if check else None})
    else:
        from rich.table import Table

        t = Table(title=f"{nm}: {len(facts)} fact(s)" + (f" about {subject}" if subject else ""), title_justify="left")
        for col in ("fact", "event", "v", "request", "old → new", "by", "when (UTC)"):
            t.add_column(col, no_wrap=col in ("event", "v"))
        for f in facts:
            for e in f["events"]:
                t.add_row(f"{f['subject']} · {f['relation'] or f['prompt']}", e["event"], str(e["version"] or "-"),
                          e["request_id"] or "-", f"{e['old'] or '?'} → {e['new'] or '?'}", e["requested_by"] or "-",
                          e["ts"][:16].replace("T", " "))
        stdout().print(t)
        for e in events:
            if e.get("event") == "hook_failed":
                stdout().print(f"hook {e.get('hook')} FAILED on {e.get('on')} of version {e.get('version')} "
                               f"({e.get('ts', '')[:16].replace('T', ' ')}): {e.get('error')}", highlight=False)
        if check is not None:
            msg = (f"ledger verified: {check.records} records, head {str(check.head)[:20]}…" if check.ok else
                   "ledger BROKEN:\n  " + "\n  ".join(check.problems))
            stdout().print(msg, highlight=False)
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def diff(
    va: int = typer.Argument(..., help="Version A."),
    vb: int = typer.Argument(..., help="Version B."),
    name: Optional[str] = NameOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The facts that differ between two versions, and the requests behind each side."""
    with registry_errors(as_json):
        from registry.audit import diff as do_diff
        from registry.store import open_store

        store = open_store()
        res = do_diff(_registry_name(store, name), va, vb, store)
    if as_json:
        emit_json({"ok": True, **res})
        return
    from rich.table import Table

    t = Table(title=f"{res['name']}: version {va} vs {vb} ({len(res['changed'])} fact(s) differ)", title_justify="left")
    for col in ("subject", "relation / prompt", f"v{va}", f"v{vb}", "requests"):
        t.add_column(col)
    for c in res["changed"]:
        a, b = c["a"], c["b"]
        side = lambda x: f"{x['answer']} (v{x['version']})" if x else f"{c['base_answer'] or 'base'} (base)"  # noqa: E731
        reqs = ", ".join(x["request_id"] for x in (a, b) if x)
        t.add_row(c["subject"], c["relation"] or c["prompt"], side(a), side(b), reqs)
    stdout().print(t)


@app.command()
def rollback(
    to: Optional[int] = typer.Option(None, "--to", help="The version whose weights the new version restores bit for bit."),
    revert: Optional[str] = typer.Option(None, "--revert", help="A request id: re-derive the newest version without "
                                         "it (the other edits are recomputed) and gate it again."),
    name: Optional[str] = NameOpt,
    promote_now: bool = typer.Option(False, "--promote", help="With --to: also make the new version champion."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="With --revert: gate thresholds (YAML)."),
    protected: Optional[Path] = typer.Option(None, "--protected", help="With --revert: protected facts JSONL (default "
                                             "FACTSMITH_HOME/protected_facts.jsonl when present)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (recorded in the ledger)."),
    by: Optional[str] = typer.Option(None, "--by", help="Who rolls back (recorded in the ledger)."),
    hooks: Optional[Path] = HooksOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Undo without rewriting history: --to VERSION registers a new version with VERSION's exact weights;
    --revert REQUEST_ID registers the newest version re-derived without that request (exit 1 if its gate fails).
    A rollback calls the promotion hooks."""
    gate = None
    delivered: list = []
    with registry_errors(as_json):
        if (to is None) == (revert is None):
            raise ValueError("rollback: expected exactly one of --to VERSION or --revert REQUEST_ID")
        if revert is not None and promote_now:
            raise ValueError("--promote: only with --to (a re-derived version is gated first; promote it after review)")
        from registry.store import open_store

        hk = promotion_hooks(hooks, delivered)
        store = open_store()
        nm = _registry_name(store, name)
        if to is not None:
            from registry.versions import rollback_to

            info = rollback_to(nm, to, promote_now=promote_now, reason=reason, requested_by=by, store=store,
                               hooks=hk)
        else:
            from flows.revert import revert_request
            from validation.gate.policy import load_policy
            from validation.gate.probes import load_protected

            prot_path = protected_facts_file(protected)
            res = revert_request(nm, revert, policy=load_policy(policy_file),
                                 protected=load_protected(prot_path) if prot_path else [], reason=reason,
                                 requested_by=by, store=store, hooks=hk)
            info, gate = res.version, res.gate
    ok = gate is None or gate.passed
    if as_json:
        emit_json({"ok": ok, **info.to_json(), "gate": None if gate is None else gate.to_json(), "hooks": delivered})
    elif to is not None or gate is None:
        print(f"{info.name}: version {info.version} restores version {info.parent_version}'s weights "
              f"({info.weights_sha256[:12]}…; aliases {', '.join(info.aliases)})")
    else:
        print(f"{info.name}: version {info.version} is version {info.tags.get('reverted_from')} re-derived without "
              f"request {revert} (gate {'passed' if gate.passed else 'FAILED'}; aliases {', '.join(info.aliases)})")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command("export")
def export_cmd(
    ref: str = typer.Argument(..., help="The version to write out: NAME@alias (e.g. demo@champion) or NAME/3."),
    out: Path = typer.Option(..., "--out", help="The directory to write (a Hugging Face model directory)."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it exists and is not empty."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a registered version out as a complete Hugging Face directory (safetensors, config, tokenizer and
    factsmith.json: version, weights SHA-256, lineage, the facts its edits changed), verified against the
    version's hash before it appears at --out (atomic)."""
    with registry_errors(as_json):
        from registry.export import export

        man = export(ref, out, force=force)
    if as_json:
        emit_json({"ok": True, "out": str(out), **{k: man[k] for k in ("model", "version", "weights_sha256")},
                   "facts_changed": len(man["facts_changed"])})
        return
    print(f"exported {man['model']} version {man['version']} (weights {man['weights_sha256'][:12]}…, "
          f"{len(man['facts_changed'])} fact(s) changed along its lineage) to {out}")
