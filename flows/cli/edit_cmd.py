"""``factsmith edit``, ``stats`` and ``locate``: edit a model directory, its covariance statistics, causal
tracing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from editing.methods import choices as methods_choices
from editing.methods import help_text as methods_help

from .app import app
from .output import JsonOpt, Phases, check_method, emit_json, input_errors, prob, stderr, stdout


def _check_files(paths: list[Path], what: str) -> None:
    """Fail before the model loads when an input file is missing."""
    from editing.stats import CorpusError

    for p in paths:
        if not p.is_file():
            raise CorpusError(f"{p}: {what} file not found")


def _check_layers(model, layers: list[int], where: str) -> None:
    """Layer indices against the model's depth; the error names where the layers came from."""
    from editing.arch import n_layers, spec_for

    n = n_layers(model)
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise ValueError(f"{where}: layer(s) {bad} out of range: the {spec_for(model).family} model has {n} layers "
                         f"(0..{n - 1})")


def _edit_events(phases: Phases, method: str):
    """The ``on_event(phase, detail)`` callback of ``compute_edit``, drawn on ``phases``."""
    from editing.methods import get

    describe_targets = get(method).progress
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
            description, total = describe_targets(d.get("requests", 0))
            phases.start(description, total=total)
        elif phase == "request":
            phases.update(d["done"], d["total"])
        elif phase == "solve":
            step = str(d.get("step", ""))
            if step.startswith("targets "):  # "targets 300/1000": a chunk of a streamed batch done
                done, total = step.split()[1].split("/")
                phases.update(int(done), int(total))
            elif step == "targets":
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


@app.command()
def edit(
    model_dir: Path = typer.Option(..., "--model", help="Model directory (a Hugging Face causal LM)."),
    requests_file: Path = typer.Option(..., "--requests", help="Requests (native JSONL: id, subject, prompt with "
                                       "'{}', target_new, optional target_true; or CSV, CounterFact, zsRE, MQuAKE), "
                                       "validated as 'factsmith validate' does: any bad row stops the edit."),
    method: str = typer.Option(..., "--method", help=methods_help() + "."),
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
    device: Optional[str] = typer.Option(None, "--device", help="Where the model runs: cpu (default), cuda or "
                                         "cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Load, edit and write the model in this dtype: "
                                        "float32, bfloat16 or float16 (default: as stored). The solves run in "
                                        "float64 whatever it is."),
    as_json: bool = JsonOpt,
) -> None:
    """Edit facts into a model with ROME or MEMIT; write the edited model, its delta and an audit record."""
    import time
    from importlib.metadata import version as pkg_version

    t_start = time.perf_counter()
    with input_errors(as_json):
        check_method(method)
        problem = _out_dir_problem(out, model_dir, force)
        if problem:
            raise ValueError(problem)
        from editing import delta as D
        from editing import hparams as H
        from editing import methods, modeldir
        from editing.engine import compute_edit
        from editing.store import Cache
        from flows import settings
        from validation.intake.validate import read_requests

        modeldir.check_placement(device, dtype)  # before anything is read
        requests = [r.to_edit_request() for r in read_requests(requests_file)]
        hp, hp_path = (None, None) if hparams_file is None else H.resolve(method, hparams_file, model_dir)
        _check_files(list(corpus or []), "corpus")
        corpus = corpus or modeldir.model_corpus(model_dir)
        timings: dict[str, float] = {}
        console = stderr()
        with Phases(console) as phases:
            t0 = time.perf_counter()
            phases.start(f"loading {model_dir}")
            model, tok = modeldir.load(model_dir, device, dtype)
            timings["load"] = time.perf_counter() - t0
            if hp is None:
                hp, hp_path = H.resolve(method, None, model_dir, model)
            m = methods.of(hp)
            _check_layers(model, m.layers(hp), f"{hp_path}: '{m.layers_key}'")

            t0 = time.perf_counter()
            phases.start(f"scoring {len(requests)} request(s) before the edit")
            before = _score(model, tok, requests)
            t_score = time.perf_counter() - t0

            result = compute_edit(model, tok, requests, hp, Cache(settings.cache_dir()),
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
            record = {
                "format": "factsmith.edit/1",
                "factsmith": pkg_version("factsmith"),
                "method": hp.method,
                "hparams_file": str(Path(hp_path).resolve()),
                "hparams": H.to_dict(hp),
                "requests": [r.to_json() for r in requests],
                "base_model": str(model_dir.resolve()),
                "base_weights_sha256": result.delta.meta["base_weights_sha256"],
                "edited_weights_sha256": D.weights_sha256(model),
                "delta": modeldir.DELTA,
                "stats_corpus": result.delta.meta.get("stats_corpus"),
                "timings": timings,
                "results": rows,
                "details": result.details,
            }

            def write_record(path: Path) -> None:
                timings["write"] = time.perf_counter() - t0
                timings["wall"] = time.perf_counter() - t_start
                timings.update({k: round(v, 4) for k, v in timings.items()})
                path.write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")

            modeldir.write_edited(model, tok, out, model_dir, {modeldir.DELTA: result.delta.save,
                                                               modeldir.EDIT_RECORD: write_record})
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
                  f"{prob(r['p_new_before'])} → {prob(r['p_new_after'])}", escape(r["target_true"] or ""),
                  f"{prob(r['p_true_before'])} → {prob(r['p_true_after'])}" if known else "",
                  "[green]✓[/]" if r["success"] else "[red]✗[/]")
    console = stdout()
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
    method: Optional[str] = typer.Option(None, "--method", help=f"{methods_choices()}: whose hparams decide the corpus "
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
    with input_errors(as_json):
        check_method(method)
        from editing import hparams as H
        from editing.arch import key_size
        from editing.engine import edit_layers, stats_corpus
        from editing.modeldir import load, model_corpus
        from editing.stats import describe, second_moments
        from editing.store import Cache
        from flows import settings

        hp, hp_path = (None, None) if hparams_file is None else H.resolve(method, hparams_file, model_dir)
        wanted = _parse_layers(layers) if layers is not None else None
        _check_files(list(corpus or []), "corpus")
        corpus = corpus or model_corpus(model_dir)
        with Phases(stderr()) as phases:
            phases.start(f"loading {model_dir}")
            model, tok = load(model_dir)
            if hp is None:
                hp, hp_path = H.resolve(method, None, model_dir, model)
            if samples is not None:
                hp = H.with_changes(hp, stats__mom2_samples=samples)
            wanted = wanted if wanted is not None else edit_layers(hp)
            _check_layers(model, wanted, "--layers" if layers is not None else f"{hp_path}: layers")
            store = Cache(settings.cache_dir())
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
    stdout().print(t)



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

    with input_errors(as_json):
        from editing.modeldir import load

        model, tok = load(model_dir)
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
    console = stdout()
    console.print(t)
    console.print(f"trace: {trace_json}\n" + "\n".join(f"{site} heatmap: {p}" for site, p in pngs.items()), highlight=False)

