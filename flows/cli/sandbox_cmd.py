"""``factsmith sandbox build | world | ask | show`` and ``factsmith ask``: factsmith's own fact models, and
what a model says."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import app, sandbox_app
from .output import JsonOpt, emit_json, input_errors, pct, progress_bar, registry_errors, stderr, stdout


def _load_fact_set(facts: Optional[Path], limit: Optional[int], names: Optional[Path] = None):
    from sandbox import load_facts, load_names, world_facts
    from sandbox.facts import load_requested

    fs = world_facts(subjects=limit) if facts is None else load_facts(facts, limit=limit)
    return fs if names is None else fs.with_contenders(load_requested(names)).with_names(load_names(names))


def build_model(facts: Optional[Path], out: Path, preset_name: str, seed: int, limit: Optional[int], force: bool,
                cache: bool, quiet: bool, names: Optional[Path] = None):
    """Load facts (and names to say) and build (or reuse) a sandbox model; shared by ``sandbox build`` and ``demo``."""
    from flows import settings
    from sandbox import build_sandbox, preset

    fs = _load_fact_set(facts, limit, names)
    cfg = preset(preset_name)
    console = stderr()
    if not quiet:
        console.print(f"[bold]facts[/] {fs.source}: {len(fs.facts)} facts from {fs.records} records"
                      + (f", {len(fs.conflicts)} conflicting dropped" if fs.conflicts else "")
                      + (f"; {len(fs.names)} names to say" if fs.names else ""), highlight=False)
    bar, on_event = progress_bar(console, f"training ({preset_name})")
    with bar:
        result = build_sandbox(fs, out, cfg, seed, preset_name=preset_name, force=force,
                               cache_dir=settings.sandbox_cache() if cache else None, progress=on_event)
    return result


@sandbox_app.command("build")
def sandbox_build(
    out: Path = typer.Option(..., "--out", help="Directory to write the model to (a Hugging Face directory)."),
    facts: Optional[Path] = typer.Option(
        None, "--facts", help="Facts file: facts JSONL, request JSONL, or CounterFact (either format). "
        "Default: the built-in world of countries."),
    preset_name: str = typer.Option("tiny", "--preset", help="tiny (tests), demo (the demo world) or bench (longer training, for large worlds)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data order, held-out split and weights."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N records (subjects for the built-in world)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it holds something else."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Train even if the cache has this build."),
    names: Optional[Path] = typer.Option(
        None, "--names", help="Names the model should be able to say without any fact about them (as a real "
        "model can spell people it knows nothing about): one a line, a JSON(L) list of strings, or a request "
        "file whose target_new values are taken; a request's new answer is also learnt as a contender for its "
        "subject and relation (\"In a possible future, the head of state of Denmark is Frederik X\"), as a real "
        "model met it before the change. Part of the build key; listed in sandbox.json."),
    as_json: bool = JsonOpt,
) -> None:
    """Train a small GPT-2 on a facts file until it knows them; save it with its tokenizer and a manifest."""
    with input_errors(as_json):
        result = build_model(facts, out, preset_name, seed, limit, force, cache=not no_cache, quiet=as_json,
                             names=names)
    m = result.manifest
    summary = {
        "ok": True,
        "path": str(result.path),
        "cached": result.cached,
        "key": m["key"],
        "preset": m["preset"],
        "seed": m["seed"],
        "facts": m["facts"],
        "accuracy": {k: m["accuracy"][k] for k in ("train", "heldout", "train_probes", "heldout_probes", "by_phrasing")},
        "train": m["train"],
        "model": m["model"],
    }
    if as_json:
        emit_json(summary)
        return
    _print_build(result)


def _print_build(result) -> None:
    from rich.table import Table

    m = result.manifest
    acc = m["accuracy"]
    t = Table(title=f"sandbox model {'(from cache)' if result.cached else 'built'}: {result.path}", show_header=False)
    t.add_row("facts", f"{m['facts']['facts']} ({m['facts']['subjects']} subjects, {m['facts']['relations']} relations)")
    t.add_row("model", f"{m['config']['n_layer']} layers x {m['config']['n_embd']}, MLP {m['config']['n_inner']}, "
                       f"{m['model']['parameters']:,} parameters, vocab {m['tokenizer']['vocab_size']}")
    t.add_row("training", f"{m['train']['steps']} steps, {m['train']['epochs']} epochs, {m['train']['seconds']} s")
    t.add_row("train phrasings", pct(acc["train"]) + f" of {acc['train_probes']}")
    t.add_row("held-out phrasings", pct(acc["heldout"]) + f" of {acc['heldout_probes']}")
    for rel, v in acc["by_relation"].items():
        held = acc.get("heldout_by_relation", {}).get(rel)
        t.add_row(f"  {rel}", pct(v) + ("" if held is None else f"  (held-out {pct(held)})"))
    stdout().print(t)


@sandbox_app.command("world")
def sandbox_world(
    out: Path = typer.Option(..., "--out", help="Facts JSONL to write."),
    as_json: bool = JsonOpt,
) -> None:
    """Export the built-in world (51 countries, mid-2023) as a facts JSONL file."""
    from sandbox import example_inbox, world_facts, write_facts

    fs = world_facts()
    write_facts(fs.facts, out)
    res = {"ok": True, "path": str(out), "facts": len(fs.facts), "example_inbox": str(example_inbox())}
    emit_json(res) if as_json else print(f"wrote {len(fs.facts)} facts to {out}; example inbox: {example_inbox()}")


PromptOpt = typer.Option(..., "--prompt", help="Prompt; '{}' is replaced by --subject.")
SubjectOpt = typer.Option(None, "--subject", help="The subject that fills the prompt's '{}'.")
TopOpt = typer.Option(5, "--top", help="How many of the most likely next tokens to show.")


@sandbox_app.command("ask")
def sandbox_ask(
    model_dir: str = typer.Option(..., "--model", help="Model directory, or a registered version: NAME@alias "
                                  "(demo@champion) or NAME/VERSION."),
    prompt: str = PromptOpt,
    subject: Optional[str] = SubjectOpt,
    top: int = TopOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Greedy answer of a model to one prompt (the same as 'factsmith ask MODEL')."""
    _ask(model_dir, prompt, subject, top, as_json)


def _ask(ref: str, prompt: str, subject: Optional[str], top: int, as_json: bool) -> None:
    from flows.ask import ask as ask_model

    with registry_errors(as_json):
        res = ask_model(ref, prompt, subject, top)
    if as_json:
        emit_json(res)
        return
    which = res["model"] if res.get("version") is None else f"{res['ref']} (version {res['version']})"
    print(f"{which}: {res['prompt']} -> {res['answer']}")
    print("next token: " + ", ".join(f"{t['token']!r} {t['prob']:.3f}" for t in res["top"]))


@app.command()
def ask(
    ref: str = typer.Argument(..., help="Model directory, or a registered version: NAME@alias "
                              "(demo@champion) or NAME/VERSION (demo/3). An existing directory wins."),
    prompt: str = PromptOpt,
    subject: Optional[str] = SubjectOpt,
    top: int = TopOpt,
    as_json: bool = JsonOpt,
) -> None:
    """What a model says: its greedy answer to a prompt and the most likely next tokens with their probabilities."""
    _ask(ref, prompt, subject, top, as_json)


def _print_knowledge(table: dict[str, Any], title: str) -> None:
    from rich.table import Table

    relations = list(dict.fromkeys(f["relation"] for f in table["facts"]))
    by_subject: dict[str, dict[str, dict[str, Any]]] = {}
    for f in table["facts"]:
        by_subject.setdefault(f["subject"], {})[f["relation"]] = f
    t = Table(title=title, title_justify="left")
    t.add_column("subject", style="bold")
    for r in relations:
        t.add_column(r.replace("_", " "))
    for subject, cells in by_subject.items():
        row = [subject]
        for r in relations:
            f = cells.get(r)
            if f is None:
                row.append("")
            elif f["correct"]:
                row.append(f"[green]{f['answer']}[/]")
            else:
                row.append(f"[red]{f['answer'] or '∅'}[/] [dim](≠ {f['expected']})[/]")
        t.add_row(*row)
    stdout().print(t)


@sandbox_app.command("show")
def sandbox_show(
    model_dir: Path = typer.Option(..., "--model", help="A sandbox model directory."),
    as_json: bool = JsonOpt,
) -> None:
    """Table of what a sandbox model answers for each of its facts (main phrasing)."""
    with input_errors(as_json):
        from editing.modeldir import load
        from sandbox.evaluate import knowledge_table

        model, tok = load(model_dir)
        table = knowledge_table(model, tok, model_dir)
    if as_json:
        emit_json(table)
    else:
        _print_knowledge(table, f"What {model_dir} knows ({table['correct']}/{table['total']} correct)")
