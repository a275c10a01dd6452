"""The ``factsmith`` command line.

Every command takes ``--json`` and then prints exactly one JSON object on stdout (progress and messages go
to stderr). Heavy libraries (torch, Prefect, MLflow, Great Expectations) are imported inside the commands
that need them, so ``factsmith --help`` stays fast.

Exit codes: 0 success; 1 the command ran and failed (a gate, say); 2 bad input (the message names the file,
line and field).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

app = typer.Typer(
    name="factsmith",
    help="Keep the facts of deployed language models current, safely.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(help="Build and inspect sandbox fact models.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables.")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _stderr():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # never break a path or a message across lines


def _stdout():
    from rich.console import Console

    return Console(soft_wrap=True)


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Turn the packages' input errors into a clear message and exit code 2."""
    from sandbox.errors import SandboxError

    try:
        yield
    except (SandboxError, ValueError) as e:
        if as_json:
            emit_json({"ok": False, "error": str(e), "kind": type(e).__name__})
        _stderr().print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print factsmith's version."""
    from importlib.metadata import version as v

    ver = v("factsmith")
    emit_json({"factsmith": ver}) if as_json else print(f"factsmith {ver}")


# ----------------------------------------------------------------------------------------------------
# sandbox


def _progress_bar(console, description: str):
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


def _load_fact_set(facts: Optional[Path], limit: Optional[int]):
    from sandbox import load_facts, world_facts

    if facts is None:
        return world_facts(subjects=limit)
    return load_facts(facts, limit=limit)


def build_model(facts: Optional[Path], out: Path, preset_name: str, seed: int, limit: Optional[int], force: bool,
                cache: bool, quiet: bool):
    """Load facts and build (or reuse) a sandbox model; shared by ``sandbox build`` and ``demo``."""
    from flows import settings
    from sandbox import build_sandbox, preset

    fs = _load_fact_set(facts, limit)
    cfg = preset(preset_name)
    console = _stderr()
    if not quiet:
        console.print(f"[bold]facts[/] {fs.source}: {len(fs.facts)} facts from {fs.records} records"
                      + (f", {len(fs.conflicts)} conflicting dropped" if fs.conflicts else ""), highlight=False)
    bar, on_event = _progress_bar(console, f"training ({preset_name})")
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
    preset_name: str = typer.Option("tiny", "--preset", help="tiny (tests) or demo (longer training)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data order, held-out split and weights."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N records (subjects for the built-in world)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it holds something else."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Train even if the cache has this build."),
    as_json: bool = JsonOpt,
) -> None:
    """Train a small GPT-2 on a facts file until it knows them; save it with its tokenizer and a manifest."""
    with _errors(as_json):
        result = build_model(facts, out, preset_name, seed, limit, force, cache=not no_cache, quiet=as_json)
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
    t.add_row("train phrasings", _pct(acc["train"]) + f" of {acc['train_probes']}")
    t.add_row("held-out phrasings", _pct(acc["heldout"]) + f" of {acc['heldout_probes']}")
    for rel, v in acc["by_relation"].items():
        held = acc.get("heldout_by_relation", {}).get(rel)
        t.add_row(f"  {rel}", _pct(v) + ("" if held is None else f"  (held-out {_pct(held)})"))
    _stdout().print(t)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1%}"


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


def _load_model(model_dir: Path):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.eval(), tok


@sandbox_app.command("ask")
def sandbox_ask(
    model_dir: Path = typer.Option(..., "--model", help="Model directory."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt; '{}' is replaced by --subject."),
    subject: Optional[str] = typer.Option(None, "--subject"),
    as_json: bool = JsonOpt,
) -> None:
    """Greedy answer of a model to one prompt."""
    from sandbox.evaluate import greedy_answers

    with _errors(as_json):
        if subject is not None:
            if prompt.count("{}") != 1:
                raise ValueError("--prompt: expected exactly one '{}' when --subject is given")
            prompt = prompt.replace("{}", subject)
        model, tok = _load_model(model_dir)
        answer = greedy_answers(model, tok, [prompt])[0]
    emit_json({"prompt": prompt, "answer": answer}) if as_json else print(f"{prompt} -> {answer}")


def knowledge_table(model_dir: Path) -> dict[str, Any]:
    """What a sandbox model answers for every fact it was trained on (main phrasing), and whether it is right."""
    from sandbox.evaluate import greedy_answers, greedy_correct
    from sandbox.trainer import FACTS_FILE

    model, tok = _load_model(model_dir)
    rows = [json.loads(line) for line in (model_dir / FACTS_FILE).read_text(encoding="utf-8").splitlines() if line]
    rows = [r for r in rows if r["subject"] is not None]
    prompts = [r["prompts"][0].replace("{}", r["subject"], 1) for r in rows]
    answers = greedy_answers(model, tok, prompts)
    correct = greedy_correct(model, tok, prompts, [r["target"] for r in rows])
    # where greedy decoding produces the target, show it whole (the sentence-end heuristic would cut
    # "Michael D. Higgins" at the initial)
    answers = [r["target"] if c else a for r, a, c in zip(rows, answers, correct)]
    facts = [
        {"subject": r["subject"], "relation": r["relation"], "prompt": p, "expected": r["target"], "answer": a, "correct": c}
        for r, p, a, c in zip(rows, prompts, answers, correct)
    ]
    return {"facts": facts, "correct": sum(correct), "total": len(correct)}


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
    _stdout().print(t)


@sandbox_app.command("show")
def sandbox_show(
    model_dir: Path = typer.Option(..., "--model", help="A sandbox model directory."),
    as_json: bool = JsonOpt,
) -> None:
    """Table of what a sandbox model answers for each of its facts (main phrasing)."""
    with _errors(as_json):
        table = knowledge_table(model_dir)
    if as_json:
        emit_json(table)
    else:
        _print_knowledge(table, f"What {model_dir} knows ({table['correct']}/{table['total']} correct)")


# ----------------------------------------------------------------------------------------------------
# locate


@app.command()
def locate(
    model_dir: Path = typer.Option(..., "--model", help="Model directory (a Hugging Face causal LM)."),
    subject: str = typer.Option(..., "--subject", help="The subject whose token embeddings are corrupted."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt with '{}' for the subject, or a text containing it."),
    target: Optional[str] = typer.Option(None, "--target", help="Answer to measure (its first token). "
                                         "Default: the model's own greedy next token."),
    samples: int = typer.Option(10, "--samples", help="Noise draws averaged per measurement."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise generator."),
    out: Path = typer.Option(Path("locate-out"), "--out", help="Directory for trace.json and the heatmap PNGs."),
    as_json: bool = JsonOpt,
) -> None:
    """Causal tracing (ROME paper): where does the model recall the fact? Writes trace.json and one PNG per site."""
    from editing.locate import plot, trace_subject

    with _errors(as_json):
        model, tok = _load_model(model_dir)
        result = trace_subject(model, tok, prompt, subject, target, samples=samples, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        trace_json = out / "trace.json"
        trace_json.write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        pngs = plot(result, out)
    res = {"ok": True, "model": str(model_dir), **result.to_json(), "json": str(trace_json),
           "png": {site: str(p) for site, p in pngs.items()}}
    if as_json:
        emit_json(res)
        return
    _print_locate(result, trace_json, pngs)


def _print_locate(result, trace_json: Path, pngs: dict[str, Path]) -> None:
    from rich.table import Table

    last = result.tokens[result.subject_last]
    t = Table(title=f"{result.prompt!r}: p({result.answer!r}) clean {result.clean_p:.3f}, subject corrupted "
                    f"{result.corrupted_p:.3f}; restored at the subject's last token {last!r}", title_justify="left")
    t.add_column("layer", justify="right")
    t.add_column("MLP", justify="right")
    t.add_column("block (hidden state)", justify="right")
    best = {site: result.best_layer(site) for site in ("mlp", "block")}
    for layer, (m, b) in enumerate(zip(result.at_subject_last("mlp"), result.at_subject_last("block"))):
        cells = [f"[bold]{v:.3f}[/]" if best[site] == layer else f"{v:.3f}" for site, v in (("mlp", m), ("block", b))]
        t.add_row(str(layer), *cells)
    console = _stdout()
    console.print(t)
    console.print(f"trace: {trace_json}\n" + "\n".join(f"{site} heatmap: {p}" for site, p in pngs.items()), highlight=False)


# ----------------------------------------------------------------------------------------------------
# demo


@app.command()
def demo(
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JsonOpt,
) -> None:
    """The newcomer's tour: build (or reuse) the demo sandbox and show what it knows."""
    import time

    from flows import settings
    from sandbox import example_inbox

    t0 = time.perf_counter()
    out = settings.models_dir() / "demo-sandbox"
    with _errors(as_json):
        result = build_model(None, out, "demo", seed, None, force=True, cache=True, quiet=as_json)
        table = knowledge_table(out)
    m = result.manifest
    res = {
        "ok": True,
        "model": str(out),
        "cached": result.cached,
        "accuracy": {k: m["accuracy"][k] for k in ("train", "heldout", "by_relation")},
        "known": table["correct"],
        "facts": table["total"],
        "build_seconds": m["seconds"],
        "seconds": round(time.perf_counter() - t0, 2),
        "example_inbox": str(example_inbox()),
        "home": str(settings.home()),
    }
    if as_json:
        emit_json(res)
        return
    _print_build(result)
    _print_knowledge(table, f"What the demo model knows, main phrasing ({table['correct']}/{table['total']} correct)")
    _stdout().print(
        f"\nModel: {out}\nExample inbox of 2024–2025 changes of government: {example_inbox()}\n"
        f"Ask it yourself: factsmith sandbox ask --model {out} --prompt 'The capital of {{}} is' --subject France\n"
        f"Done in {res['seconds']} s.", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
