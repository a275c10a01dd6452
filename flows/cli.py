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
    console = _stderr()
    if not quiet:
        console.print(f"[bold]facts[/] {fs.source}: {len(fs.facts)} facts from {fs.records} records"
                      + (f", {len(fs.conflicts)} conflicting dropped" if fs.conflicts else "")
                      + (f"; {len(fs.names)} names to say" if fs.names else ""), highlight=False)
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
    with _errors(as_json):
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

    with _registry_errors(as_json):
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


def knowledge_table(model_dir: Path) -> dict[str, Any]:
    """What a sandbox model answers for every fact it was trained on (main phrasing), and whether it is right."""
    from sandbox.evaluate import greedy_answers, greedy_correct
    from sandbox.trainer import FACTS_FILE

    model, tok = _load_model(model_dir)
    rows = [json.loads(line) for line in (model_dir / FACTS_FILE).read_text(encoding="utf-8").split("\n") if line.strip()]
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
# editing

METHODS = ("rome", "memit")


def _check_method(method: Optional[str]) -> None:
    if method is not None and method not in METHODS:
        raise ValueError(f"--method: expected rome or memit, found {method!r}")


def _model_corpus(model_dir: Path) -> list[Path] | None:
    from sandbox.trainer import model_corpus

    return model_corpus(model_dir)


def _check_files(paths: list[Path], what: str) -> None:
    """Fail before the model loads when an input file is missing."""
    from editing.stats import CorpusError

    for p in paths:
        if not p.is_file():
            raise CorpusError(f"{p}: {what} file not found")


def _hparams_for(method: Optional[str], hparams_file: Optional[Path], model_dir: Path, model):
    """(hparams, file they came from): ``--hparams FILE``, else the shipped default of the model's family
    (``sandbox`` for a directory with a sandbox manifest). ``method`` None: the file's own (memit by default)."""
    from editing import hparams as H
    from editing.arch import spec_for

    if hparams_file is not None:
        return H.load(hparams_file, method), hparams_file
    family = "sandbox" if (model_dir / "sandbox.json").is_file() else spec_for(model).family
    path = H.builtin_path(method or "memit", family)
    return H.load(path, method or "memit"), path


def _check_layers(model, layers: list[int], where: str) -> None:
    """Layer indices against the model's depth; the error names where the layers came from."""
    from editing.arch import n_layers, spec_for

    n = n_layers(model)
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise ValueError(f"{where}: layer(s) {bad} out of range: the {spec_for(model).family} model has {n} layers "
                         f"(0..{n - 1})")


class _Phases:
    """Progress on stderr: one line per phase (spinner or bar, its own elapsed time)."""

    def __init__(self, console):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(finished_text="[green]✓[/]"),
                            TextColumn("{task.description}", markup=False), BarColumn(bar_width=20),
                            TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console)
        self.task = None

    def __enter__(self) -> "_Phases":
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


def _edit_events(phases: _Phases, method: str):
    """The ``on_event(phase, detail)`` callback of ``compute_edit``, drawn on ``phases``."""
    state: dict[str, Any] = {"layers": [], "solved": 0}

    def on_event(phase: str, d: dict[str, Any]) -> None:
        if phase == "templates":
            phases.start("context templates")
        elif phase == "stats":
            state["layers"] = list(d.get("layers", []))
            phases.start(f"covariance statistics, layer(s) {', '.join(map(str, state['layers']))}")
        elif phase == "stats_progress":
            phases.update(d["done"], d["total"])
        elif phase == "targets":
            n = d.get("requests", 0)
            if method == "rome":
                phases.start("ROME requests, one after another", total=n)
            else:
                phases.start(f"MEMIT target vectors, {n} request(s) together")
        elif phase == "request":
            phases.update(d["done"], d["total"])
        elif phase == "solve":
            if d.get("step") == "targets":
                phases.start("MEMIT layer updates", total=len(state["layers"]) or None)
            else:
                state["solved"] += 1
                phases.update(state["solved"], len(state["layers"]))

    return on_event


def _score(model, tok, requests) -> list[dict[str, Any]]:
    """Whole-target probabilities of target_new (and target_true, when known) after each request's prompt."""
    from editing.score import score_targets

    new = score_targets(model, tok, [r.text for r in requests], [r.target_new for r in requests])
    known = [i for i, r in enumerate(requests) if r.target_true is not None]
    true = score_targets(model, tok, [requests[i].text for i in known], [requests[i].target_true for i in known])
    p_true = dict(zip(known, true))
    return [{"p_new": new[i].prob, "new_argmax": new[i].argmax,
             "p_true": p_true[i].prob if i in p_true else None} for i in range(len(requests))]


def _out_dir_problem(out: Path, model_dir: Path, force: bool) -> Optional[str]:
    o, m = out.resolve(), model_dir.resolve()
    if o == m or o in m.parents or m in o.parents:
        return f"--out {out}: must not be the --model directory {model_dir}, inside it or contain it"
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a directory"
    if out.is_dir() and any(out.iterdir()) and not force:
        return f"--out {out}: directory exists and is not empty; pass --force to replace it"
    return None


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``, replacing what is there (the caller checked --force)."""
    import os
    import shutil

    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        else:
            out.rmdir()
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@app.command()
def edit(
    model_dir: Path = typer.Option(..., "--model", help="Model directory (a Hugging Face causal LM)."),
    requests_file: Path = typer.Option(..., "--requests", help="Requests, native JSONL (id, subject, prompt with "
                                       "'{}', target_new, optional target_true)."),
    method: str = typer.Option(..., "--method", help="rome (one request after another, one layer) or memit "
                               "(one batch over several layers)."),
    hparams_file: Optional[Path] = typer.Option(None, "--hparams", help="Hyperparameter YAML. Default: the "
                                                "shipped one for the method and the model's family."),
    out: Path = typer.Option(..., "--out", help="Directory to write the edited model to (a Hugging Face "
                             "directory with delta.safetensors and edit.json)."),
    corpus: Optional[list[Path]] = typer.Option(None, "--corpus", help="Text (.txt, blank-line paragraphs) or "
                                                "JSONL ('text') file for the covariance statistics; repeatable. "
                                                "Default: the model directory's stats_corpus.txt (a sandbox "
                                                "ships its training text there), else text sampled from the "
                                                "model itself."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists and is not empty."),
    as_json: bool = JsonOpt,
) -> None:
    """Edit facts into a model with ROME or MEMIT; write the edited model, its delta and an audit record."""
    import shutil
    import time
    import uuid
    from importlib.metadata import version as pkg_version

    t_start = time.perf_counter()
    with _errors(as_json):
        _check_method(method)
        problem = _out_dir_problem(out, model_dir, force)
        if problem:
            raise ValueError(problem)
        from editing import delta as D
        from editing.engine import compute_edit, edit_layers
        from editing.hparams import to_dict
        from editing.requests import check_distinct, read_native
        from editing.store import Store
        from flows import settings

        requests = read_native(requests_file)
        if method == "memit":
            check_distinct(requests)  # before the statistics, not after
        hp, hp_path = (None, None) if hparams_file is None else _hparams_for(method, hparams_file, model_dir, None)
        _check_files(list(corpus or []), "corpus")
        corpus = corpus or _model_corpus(model_dir)
        timings: dict[str, float] = {}
        console = _stderr()
        with _Phases(console) as phases:
            t0 = time.perf_counter()
            phases.start(f"loading {model_dir}")
            model, tok = _load_model(model_dir)
            timings["load"] = time.perf_counter() - t0
            if hp is None:
                hp, hp_path = _hparams_for(method, None, model_dir, model)
            _check_layers(model, edit_layers(hp), f"{hp_path}: '{'layer' if method == 'rome' else 'layers'}'")

            t0 = time.perf_counter()
            phases.start(f"scoring {len(requests)} request(s) before the edit")
            before = _score(model, tok, requests)
            t_score = time.perf_counter() - t0

            result = compute_edit(model, tok, requests, hp, Store(settings.cache_dir()),
                                  corpus_files=list(corpus) if corpus else None, on_event=_edit_events(phases, method))
            D.apply(model, result.delta)  # the model in memory is the edited one from here on
            timings.update(result.timings)

            t0 = time.perf_counter()
            phases.start("scoring after the edit")
            after = _score(model, tok, requests)
            timings["score"] = t_score + time.perf_counter() - t0

            t0 = time.perf_counter()
            phases.start(f"writing {out}")
            rows = _edit_rows(requests, before, after)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")  # a sibling: the final rename is atomic
            tmp.mkdir()  # (not mkdtemp: its 0700 mode would stick to --out)
            try:
                # transformers 5 always writes safetensors (its save_pretrained has no safe_serialization switch)
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                result.delta.save(tmp / "delta.safetensors")
                from sandbox.trainer import FACTS_FILE, MANIFEST, STATS_CORPUS

                for name in (FACTS_FILE, MANIFEST, STATS_CORPUS):  # an edited sandbox stays a sandbox
                    if (model_dir / name).is_file():
                        shutil.copy2(model_dir / name, tmp / name)
                timings["write"] = time.perf_counter() - t0
                timings["wall"] = time.perf_counter() - t_start
                timings = {k: round(v, 4) for k, v in timings.items()}
                record = {
                    "format": "factsmith.edit/1",
                    "factsmith": pkg_version("factsmith"),
                    "method": hp.method,
                    "hparams_file": str(Path(hp_path).resolve()),
                    "hparams": to_dict(hp),
                    "requests": [r.to_json() for r in requests],
                    "base_model": str(model_dir.resolve()),
                    "base_weights_sha256": result.delta.meta["base_weights_sha256"],
                    "edited_weights_sha256": D.weights_sha256(model),
                    "delta": "delta.safetensors",
                    "stats_corpus": result.delta.meta.get("stats_corpus"),
                    "timings": timings,
                    "results": rows,
                    "details": result.details,
                }
                (tmp / "edit.json").write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n",
                                               encoding="utf-8")
                _publish(tmp, out)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "ok": True,
        "out": str(out),
        "method": hp.method,
        "hparams": str(hp_path),
        "n_requests": len(requests),
        "n_success": sum(r["success"] for r in rows),
        "base_weights_sha256": record["base_weights_sha256"],
        "edited_weights_sha256": record["edited_weights_sha256"],
        "timings": timings,
        "requests": rows,
    }
    if as_json:
        emit_json(res)
        return
    _print_edit(res)


def _edit_rows(requests, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r, b, a in zip(requests, before, after):
        # success: the new target beats the old one after the edit; without a known old target, greedy
        # decoding produces the new one
        success = a["p_new"] > a["p_true"] if r.target_true is not None else a["new_argmax"]
        rows.append({"id": r.id, "subject": r.subject, "prompt": r.prompt, "text": r.text,
                     "target_new": r.target_new, "target_true": r.target_true,
                     "p_new_before": b["p_new"], "p_new_after": a["p_new"],
                     "p_true_before": b["p_true"], "p_true_after": a["p_true"], "success": bool(success)})
    return rows


def _prob(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _print_edit(res: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{res['method'].upper()}: {res['n_success']}/{res['n_requests']} edits succeeded → "
                           f"{res['out']}"), title_justify="left")
    for col, just in (("id", "left"), ("prompt", "left"), ("new target", "left"), ("p(new) before → after", "right"),
                      ("old target", "left"), ("p(old) before → after", "right"), ("", "center")):
        t.add_column(col, justify=just)
    for r in res["requests"]:
        known = r["target_true"] is not None
        t.add_row(escape(r["id"]), escape(r["text"]), escape(r["target_new"]),
                  f"{_prob(r['p_new_before'])} → {_prob(r['p_new_after'])}", escape(r["target_true"] or ""),
                  f"{_prob(r['p_true_before'])} → {_prob(r['p_true_after'])}" if known else "",
                  "[green]✓[/]" if r["success"] else "[red]✗[/]")
    console = _stdout()
    console.print(t)
    tm = res["timings"]
    console.print(f"hparams: {escape(res['hparams'])}\ntimings (s): "
                  + ", ".join(f"{k} {tm[k]:.2f}" for k in ("load", "templates", "stats", "keys", "targets", "solve",
                                                           "score", "write", "wall") if k in tm), highlight=False)


def _parse_layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers: expected comma-separated layer indices like 0,1, found {text!r}") from None
    if not layers:
        raise ValueError(f"--layers: expected comma-separated layer indices like 0,1, found {text!r}")
    return sorted(set(layers))


@app.command()
def stats(
    model_dir: Path = typer.Option(..., "--model", help="Model directory (a Hugging Face causal LM)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layer indices, e.g. 0,1. "
                                         "Default: the layers the hparams edit."),
    method: Optional[str] = typer.Option(None, "--method", help="rome or memit: whose hparams decide the corpus "
                                         "(default: the --hparams file's own, else memit)."),
    hparams_file: Optional[Path] = typer.Option(None, "--hparams", help="Hyperparameter YAML. Default: the "
                                                "shipped one for the method and the model's family."),
    corpus: Optional[list[Path]] = typer.Option(None, "--corpus", help="Text (.txt) or JSONL ('text') corpus "
                                                "file; repeatable. Default: the model directory's "
                                                "stats_corpus.txt, else text sampled from the model itself."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Corpus samples (overrides the hparams' "
                                          "stats.mom2_samples)."),
    as_json: bool = JsonOpt,
) -> None:
    """Covariance statistics C = E[k kᵀ] of the keys of MLP output layers (computed, or read from the cache)."""
    import time

    t_start = time.perf_counter()
    with _errors(as_json):
        _check_method(method)
        from editing import hparams as H
        from editing.arch import key_size
        from editing.engine import edit_layers, stats_corpus
        from editing.stats import describe, second_moments
        from editing.store import Store
        from flows import settings

        hp, hp_path = (None, None) if hparams_file is None else _hparams_for(method, hparams_file, model_dir, None)
        wanted = _parse_layers(layers) if layers is not None else None
        _check_files(list(corpus or []), "corpus")
        corpus = corpus or _model_corpus(model_dir)
        with _Phases(_stderr()) as phases:
            phases.start(f"loading {model_dir}")
            model, tok = _load_model(model_dir)
            if hp is None:
                hp, hp_path = _hparams_for(method, None, model_dir, model)
            if samples is not None:
                hp = H.with_changes(hp, stats__mom2_samples=samples)
            wanted = wanted if wanted is not None else edit_layers(hp)
            _check_layers(model, wanted, "--layers" if layers is not None else f"{hp_path}: layers")
            store = Store(settings.cache_dir())
            phases.start("statistics corpus" + (f" ({', '.join(map(str, corpus))})" if corpus else
                                                f" ({hp.stats.mom2_samples} model samples)"))
            c = stats_corpus(model, tok, hp, store, list(corpus) if corpus else None)
            dtype = hp.stats.mom2_dtype
            found: dict[int, tuple[Any, int, bool, float]] = {}
            for layer in wanted:  # the cache lookup second_moments does, to say which layers come from it
                t0 = time.perf_counter()
                hit = store.get_tensors("stats", describe(model, layer, c, dtype))
                if hit is not None:
                    found[layer] = (hit["mom2"], int(hit["count"]) if "count" in hit else c.tokens, True,
                                    time.perf_counter() - t0)
            todo = [x for x in wanted if x not in found]
            if todo:
                phases.start(f"covariance statistics, layer(s) {', '.join(map(str, todo))} (one pass)",
                             total=len(c.sequences))
                t0 = time.perf_counter()
                covs = second_moments(model, todo, c, store, dtype, progress=phases.update)
                dt = time.perf_counter() - t0
                for layer in todo:
                    found[layer] = (covs[layer], c.tokens, False, dt)
            phases.start("trace and condition numbers")
            rows = [_stats_row(layer, key_size(model, layer), *found[layer]) for layer in wanted]
    res = {
        "ok": True,
        "model": str(model_dir),
        "method": hp.method,
        "hparams": str(hp_path),
        "corpus": {"name": c.name, "sha256": c.sha256, "sequences": len(c.sequences), "tokens": c.tokens},
        "dtype": dtype,
        "layers": rows,
        "seconds": round(time.perf_counter() - t_start, 4),
    }
    if as_json:
        emit_json(res)
        return
    _print_stats(res)


def _stats_row(layer: int, width: int, C, tokens: int, cached: bool, seconds: float) -> dict[str, Any]:
    import torch

    C = C.double()  # (d_k, d_k)
    ev = torch.linalg.eigvalsh(C)  # ascending
    cond = float(ev[-1] / ev[0]) if float(ev[0]) > 0 else None  # None: C is singular (to float64 precision)
    return {"layer": layer, "key_width": width, "tokens": tokens, "from_cache": cached, "seconds": round(seconds, 4),
            "trace": float(torch.trace(C)), "condition_number": cond}


def _print_stats(res: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = res["corpus"]
    t = Table(title=escape(f"C = E[k kᵀ] of {res['model']} over {c['name']} ({c['sequences']} sequences, "
                           f"{c['tokens']} tokens, {res['dtype']})"), title_justify="left")
    for col in ("layer", "key width", "tokens", "from cache", "seconds", "trace", "condition number"):
        t.add_column(col, justify="right")
    for r in res["layers"]:
        cond = "singular" if r["condition_number"] is None else f"{r['condition_number']:.3g}"
        t.add_row(str(r["layer"]), str(r["key_width"]), str(r["tokens"]), "yes" if r["from_cache"] else "no",
                  f"{r['seconds']:.2f}", f"{r['trace']:.4g}", cond)
    _stdout().print(t)


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
# validate

EXIT_UNREADABLE = 3
KEEP_UNKNOWN_HELP = ("Keep a native request's unknown fields under 'extra' (recorded, never interpreted) instead of "
                     "quarantining the row (the default).")


@app.command()
def validate(
    files: list[Path] = typer.Argument(..., help="Request files (native JSONL/CSV, CounterFact, zsRE, MQuAKE)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the format: native, csv, counterfact, "
                                      "counterfact-flat, zsre, mquake (default: detected from each file)."),
    policy: str = typer.Option("reject", "--policy", help="Requests with different targets for one fact: "
                               "'reject' quarantines them all, 'latest-wins' keeps the latest requested_at."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine", help="Append quarantined rows to this JSONL "
                                              "(default FACTSMITH_HOME/quarantine/quarantine.jsonl)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Great Expectations data docs directory "
                                        "(default FACTSMITH_HOME/validation/docs)."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Do not write data docs."),
    keep_unknown_fields: bool = typer.Option(False, "--keep-unknown-fields", help=KEEP_UNKNOWN_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Validate request files with Great Expectations: accepted, quarantined (with reasons), superseded.

    Exit 0 when every row is valid, 2 when some rows were quarantined, 3 when a file cannot be read at all."""
    from flows import settings

    with _errors(as_json):
        from validation.conflicts import POLICIES
        from validation.formats import FORMATS

        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
        if policy not in POLICIES:
            raise ValueError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
    from validation.validate import validate_files, write_quarantine

    docs_dir = None if no_docs else (docs or settings.home() / "validation" / "docs")
    report = validate_files(files, fmt=fmt, policy=policy, docs_dir=docs_dir, keep_unknown_fields=keep_unknown_fields)
    qpath = None
    if report.quarantined:
        qpath = write_quarantine(report.quarantined, quarantine or settings.home() / "quarantine" / "quarantine.jsonl")
    code = EXIT_UNREADABLE if report.unreadable else (EXIT_BAD_INPUT if report.quarantined else 0)
    if as_json:
        emit_json({"ok": code == 0, **report.to_json(), "quarantine_file": str(qpath) if qpath else None,
                   "exit_code": code})
    else:
        _print_validation(report, qpath)
    raise typer.Exit(code)


def _print_validation(report, qpath: Optional[Path]) -> None:
    from rich.table import Table

    err = _stderr()
    for u in report.unreadable:
        err.print(f"[bold red]error:[/] {u['error']}", highlight=False)
    c = report.counts()
    t = Table(title="Validation", title_justify="left")
    for col in ("file", "format", "rows"):
        t.add_column(col, justify="right" if col == "rows" else "left")
    for f in report.files:
        t.add_row(f["file"], f["format"], str(f["rows"]))
    out = _stdout()
    if report.files:
        out.print(t)
    out.print(f"accepted {c['accepted']} · quarantined {c['quarantined']} · superseded {c['superseded']}"
              + (f" · unreadable files {c['unreadable_files']}" if c["unreadable_files"] else ""), highlight=False)
    if report.quarantined:
        q = Table(title="Quarantined", title_justify="left")
        for col in ("where", "id", "field", "reason"):
            q.add_column(col, overflow="fold")
        for row in report.quarantined[:50]:
            p = row.problems[0]
            q.add_row(row.origin.where(), row.id or "", p.field, row.reason)
        out.print(q)
        if len(report.quarantined) > 50:
            out.print(f"... and {len(report.quarantined) - 50} more", highlight=False)
        out.print(f"Quarantine records: {qpath}", highlight=False)
    for s in report.superseded[:20]:
        out.print(f"superseded: {s.request.id} — {s.reason}", highlight=False)
    if report.docs:
        out.print(f"Data docs: {report.docs}", highlight=False)


# ----------------------------------------------------------------------------------------------------
# gate


def _gate_requests(path: Path):
    """The requests a gate checks: the file validated as ``factsmith validate`` does; any bad row is an error."""
    from validation.validate import validate_files

    rep = validate_files([path], policy="latest-wins")
    if rep.unreadable:
        raise ValueError(rep.unreadable[0]["error"])
    if rep.quarantined:
        q = rep.quarantined[0]
        raise ValueError(f"{q.origin.where()}: field '{q.problems[0].field}': {q.reason} "
                         f"({len(rep.quarantined)} row(s) quarantined; run factsmith validate {path})")
    if not rep.accepted:
        raise ValueError(f"{path}: no requests to gate")
    return rep.accepted


def protected_facts_file(given: Optional[Path]) -> Optional[Path]:
    """``--protected FILE``, else FACTSMITH_HOME/protected_facts.jsonl when the operator keeps one."""
    from flows import settings

    if given is not None:
        if not given.is_file():
            raise ValueError(f"{given}: protected facts file not found")
        return given
    default = settings.home() / "protected_facts.jsonl"
    return default if default.is_file() else None


@app.command()
def gate(
    base: Path = typer.Option(..., "--base", help="The model before the edit (Hugging Face directory)."),
    edited: Path = typer.Option(..., "--edited", help="The edited model (Hugging Face directory)."),
    requests_file: Path = typer.Option(..., "--requests", help="The requests the edit applied (any request format)."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Gate thresholds (YAML; default: built-in)."),
    protected: Optional[Path] = typer.Option(None, "--protected", help="Protected facts JSONL (default "
                                             "FACTSMITH_HOME/protected_facts.jsonl when present)."),
    report: Path = typer.Option(..., "--report", help="Directory for gate.json, gate.md and gate.html."),
    as_json: bool = JsonOpt,
) -> None:
    """Gate an edited model against its base: reliability, generalization, locality, fluency, norms.

    Exit 0 when the gate passes, 1 when it fails, 2 on bad input."""
    with _errors(as_json):
        from validation.gate import load_policy
        from validation.probes import fluency_text, load_protected, model_facts

        policy = load_policy(policy_file)
        prot_path = protected_facts_file(protected)
        prot = load_protected(prot_path) if prot_path else []
        reqs = _gate_requests(requests_file)
        base_model, tok = _load_model(base)
        edited_model, _ = _load_model(edited)
    from validation.gate import run_gate
    from validation.report import write_reports

    res = run_gate(base_model, edited_model, tok, reqs, policy, protected=prot, pool=model_facts(base),
                   text=fluency_text(base))
    res.meta = {"base": str(base), "edited": str(edited), "requests_file": str(requests_file),
                "policy_file": str(policy_file) if policy_file else None,
                "protected_file": str(prot_path) if prot_path else None}
    paths = write_reports(res, report)
    if as_json:
        emit_json({"ok": res.passed, **res.to_json(), "reports": {k: str(v) for k, v in paths.items()}})
    else:
        _print_gate(res, paths)
    raise typer.Exit(0 if res.passed else EXIT_FAILED)


def _print_gate(res, paths: dict) -> None:
    from rich.table import Table

    from validation.report import fmt, summary_rows

    t = Table(title=f"Gate: {'PASSED' if res.passed else 'FAILED'} ({len(res.requests)} requests)",
              title_justify="left")
    for col in ("metric", "before", "after", "threshold", ""):
        t.add_column(col, justify="left" if col in ("metric", "") else "right")
    for r in summary_rows(res):
        style = "bold red" if r["status"] == "FAIL" else None
        t.add_row(r["label"], fmt(r["before"]), fmt(r["after"]), fmt(r["threshold"]), r["status"], style=style)
    out = _stdout()
    out.print(t)
    for f in res.failures:
        who = ", ".join(f["requests"]) or "the batch as a whole"
        out.print(f"failed: {f['metric']} {fmt(f['value'])} against {fmt(f['threshold'])} — {who}", highlight=False)
    out.print(f"Report: {paths['html']}", highlight=False)


# ----------------------------------------------------------------------------------------------------
# demo


@app.command()
def demo(
    seed: int = typer.Option(0, "--seed", help="The demo sandbox's training seed."),
    method: str = typer.Option("memit", "--method", help="rome or memit."),
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
    with _registry_errors(as_json):
        _check_method(method)
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
            _stderr().print(f"demo sandbox: {out} ({'from the cache' if result.cached else 'built'}; knows "
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
    _stdout().print(
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
    _stdout().print(t)


DEMO_MODEL = "demo"


def demo_hparams(method: str) -> Path | None:
    """The demo's MEMIT hparams (sandbox/worlds/demo-memit.yaml: fewer context templates, and why); ROME uses
    the sandbox preset."""
    from sandbox import example_inbox

    return example_inbox().parent / "demo-memit.yaml" if method == "memit" else None


def demo_gate_policy() -> Path:
    """The demo's gate policy (sandbox/worlds/demo-gate.yaml: why one threshold differs from the default)."""
    from sandbox import example_inbox

    return example_inbox().parent / "demo-gate.yaml"


# ----------------------------------------------------------------------------------------------------
# registry (issue 5): versions, lineage, ledger, audit, rollback

registry_app = typer.Typer(help="The model registry: register base models and edits (MLflow).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

NameOpt = typer.Option(None, "--name", help="Registered model name (default: the only one registered).")


@contextmanager
def _registry_errors(as_json: bool) -> Iterator[None]:
    """Input errors exit 2 (via :func:`_errors`); the registry's refusals (a lost race, a failed gate, a hash
    mismatch, a broken ledger) exit 1 with the message."""
    from registry.errors import RegistryError

    try:
        with _errors(as_json):
            yield
    except RegistryError as e:
        if as_json:
            emit_json({"ok": False, "error": str(e), "kind": type(e).__name__})
        _stderr().print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        raise typer.Exit(EXIT_FAILED)


def _registry_name(store, name: Optional[str]) -> str:
    from registry.errors import NotFoundError
    from registry.refs import check_name
    from registry.store import aliases, model_names

    if name is not None:
        aliases(store.client(), check_name(name))  # NotFoundError (exit 2) for a model that is not registered
        return name
    names = model_names(store.client())
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFoundError("no registered model (run: factsmith registry init --model DIR --name NAME)")
    raise ValueError(f"--name: expected one of {', '.join(names)} (several models are registered)")


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
    _stdout().print(t)


@registry_app.command("init")
def registry_init(
    model_dir: Path = typer.Option(..., "--model", help="Base model: a Hugging Face directory with safetensors."),
    name: str = typer.Option(..., "--name", help="Registered model name (letters, digits, '.', '_', '-')."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a base model as version 1 with alias champion (idempotent for the same weights)."""
    with _registry_errors(as_json):
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
    with _registry_errors(as_json):
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
    with _registry_errors(as_json):
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
    as_json: bool = JsonOpt,
) -> None:
    """Move alias champion to VERSION; refused (exit 1) when its gate failed."""
    with _registry_errors(as_json):
        from registry.store import open_store
        from registry.versions import promote as do_promote

        store = open_store()
        info = do_promote(_registry_name(store, name), version, requested_by=by, store=store)
    if as_json:
        emit_json({"ok": True, **info.to_json()})
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
    with _registry_errors(as_json):
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
        _stdout().print(t)
        if check is not None:
            msg = (f"ledger verified: {check.records} records, head {str(check.head)[:20]}…" if check.ok else
                   "ledger BROKEN:\n  " + "\n  ".join(check.problems))
            _stdout().print(msg, highlight=False)
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
    with _registry_errors(as_json):
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
    _stdout().print(t)


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
    as_json: bool = JsonOpt,
) -> None:
    """Undo without rewriting history: --to VERSION registers a new version with VERSION's exact weights;
    --revert REQUEST_ID registers the newest version re-derived without that request (exit 1 if its gate fails)."""
    gate = None
    with _registry_errors(as_json):
        if (to is None) == (revert is None):
            raise ValueError("rollback: expected exactly one of --to VERSION or --revert REQUEST_ID")
        if revert is not None and promote_now:
            raise ValueError("--promote: only with --to (a re-derived version is gated first; promote it after review)")
        from registry.store import open_store

        store = open_store()
        nm = _registry_name(store, name)
        if to is not None:
            from registry.versions import rollback_to

            info = rollback_to(nm, to, promote_now=promote_now, reason=reason, requested_by=by, store=store)
        else:
            from registry.revert import revert_request
            from validation.gate import load_policy
            from validation.probes import load_protected

            prot_path = protected_facts_file(protected)
            res = revert_request(nm, revert, policy=load_policy(policy_file),
                                 protected=load_protected(prot_path) if prot_path else [], reason=reason,
                                 requested_by=by, store=store)
            info, gate = res.version, res.gate
    ok = gate is None or gate.passed
    if as_json:
        emit_json({"ok": ok, **info.to_json(), "gate": None if gate is None else gate.to_json()})
    elif to is not None or gate is None:
        print(f"{info.name}: version {info.version} restores version {info.parent_version}'s weights "
              f"({info.weights_sha256[:12]}…; aliases {', '.join(info.aliases)})")
    else:
        print(f"{info.name}: version {info.version} is version {info.tags.get('reverted_from')} re-derived without "
              f"request {revert} (gate {'passed' if gate.passed else 'FAILED'}; aliases {', '.join(info.aliases)})")
    if not ok:
        raise typer.Exit(EXIT_FAILED)

# ----------------------------------------------------------------------------------------------------
# the pipeline (issue 6): run once in-process, or serve on a schedule


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


def _run_exit(res: dict[str, Any]) -> int:
    c = res["counts"]
    return EXIT_BAD_INPUT if c["quarantined"] or res.get("unreadable") else (EXIT_FAILED if c["rejected"] else 0)


def _print_run(res: dict[str, Any]) -> None:
    from rich.table import Table

    out = _stdout()
    gate = res.get("gate")
    if gate is not None:
        t = Table(title="Gate of the registered batch", title_justify="left")
        for col in ("metric", "value", "threshold"):
            t.add_column(col)
        th, m = gate.get("thresholds") or {}, gate.get("metrics") or {}
        # reliability and generalization are what the model says (greedy); the _p rows are CounterFact's
        # p(new) > p(old), reported without a threshold
        for k in ("reliability", "reliability_p", "generalization", "generalization_p", "subject_locality",
                  "locality", "protected", "kl", "perplexity_ratio", "entropy_drop", "max_norm_growth"):
            bound = th.get(k) if k.startswith("max_") else th.get(f"min_{k}", th.get(f"max_{k}"))
            if not isinstance(m.get(k), (int, float)):
                continue
            side = ">=" if f"min_{k}" in th else "<="
            t.add_row(k, f"{m[k]:.3f}", f"{side} {bound:g}" if isinstance(bound, (int, float)) else "-")
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
    if res["version"] is not None:
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
    method: str = typer.Option("memit", "--method", help="rome or memit."),
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
    as_json: bool = JsonOpt,
) -> None:
    """Run the fact_update flow once, in-process: validate the inbox, edit, gate, register, move the files.

    Exit 0 when every request was applied (or already was), 1 when the gate rejected some, 2 when some rows
    were quarantined (bad input: the accepted ones are still applied)."""
    with _registry_errors(as_json):
        _check_method(method)
        from validation.conflicts import POLICIES

        if policy not in POLICIES:
            raise ValueError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
        for f, what in ((hparams_file, "--hparams"), (gate_policy, "--gate-policy"), (protected, "--protected")):
            if f is not None and not f.is_file():
                raise ValueError(f"{what} {f}: file not found")
        if not inbox.is_dir():
            raise ValueError(f"--inbox {inbox}: directory not found")
        res = run_pipeline(inbox, model, method=method, policy=policy, promote=promote, bisect=not no_bisect,
                           hparams_file=hparams_file, gate_policy_file=gate_policy, protected_file=protected,
                           requested_by=by, keep_unknown_fields=keep_unknown_fields)
    code = _run_exit(res)
    if as_json:
        emit_json({"ok": code == 0, **res, "exit_code": code})
    else:
        _print_run(res)
    raise typer.Exit(code)


def run_pipeline(inbox: Path, model: Optional[str], **kw: Any) -> dict[str, Any]:
    """The flow in-process; the result of :func:`flows.flow.fact_update` plus the model name."""
    _flow_env()
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
    method: str = typer.Option("memit", "--method"),
    policy: str = typer.Option("latest-wins", "--policy"),
    promote: bool = typer.Option(False, "--promote"),
    name: str = typer.Option("fact-update", "--name", help="Deployment name."),
) -> None:
    """Serve fact_update as a scheduled deployment (needs a Prefect API: PREFECT_API_URL, or a local
    'prefect server start'); runs until interrupted."""
    with _errors(False):
        _check_method(method)
        if not inbox.is_dir():
            raise ValueError(f"--inbox {inbox}: directory not found")
        _flow_env()
        from flows.flow import fact_update
        from flows.pipeline import default_model
        from registry.store import open_store

        model_name = model or default_model(open_store())
    fact_update.serve(name=name, cron=cron, parameters={"inbox": str(inbox.resolve()), "name": model_name,
                                                         "method": method, "policy": policy, "promote": promote})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
