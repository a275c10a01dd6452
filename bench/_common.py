"""Shared parts of the editing benchmarks (bench/quality.py, bench/speed.py).

* the model: a sandbox directory given with ``--model``, or the sandbox of the first ``--records``
  CounterFact-train records built (or reused from the cache) with the ``bench`` preset;
* the requests: CounterFact records read directly, only those whose facts the sandbox was trained on;
* CounterFact's scores (ROME's ``compute_rewrite_quality_counterfact``): per prompt, the mean per-token
  NLL of the new target against the true one;
* peak memory per case, the ``meta`` block, and the JSON file that keeps rows of cases not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from registry.store import home  # noqa: F401 -- FACTSMITH_HOME, one rule for the whole tree

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACTSMITH_SHARED_DATA", REPO.parent / "shared" / "data"))
COUNTERFACT = SHARED / "counterfact" / "counterfact-train.json"
RESULTS = REPO / "bench" / "results"
SANDBOX_PRESET = "bench"
SANDBOX_SEED = 0  # the sandbox build's seed; --seed only orders the requests

log = logging.getLogger("bench")


def add_common_args(ap: argparse.ArgumentParser, out: Path) -> None:
    ap.add_argument("--model", type=Path, default=None,
                    help="sandbox model directory (default: build or reuse the sandbox of the first --records "
                         "CounterFact-train records, bench preset)")
    ap.add_argument("--sandbox", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the bench preset for the default sandbox, e.g. --sandbox n_inner=4096 "
                         "(repeatable; a build of its own, cached under its key)")
    ap.add_argument("--records", type=int, default=1000, help="CounterFact-train records to train on and edit")
    ap.add_argument("--data", type=Path, default=COUNTERFACT, help="CounterFact-train JSON (flat format)")
    ap.add_argument("--cache", type=Path, default=None, help="editing Store root (default FACTSMITH_HOME/cache)")
    ap.add_argument("--hparams", type=Path, action="append", default=[],
                    help="hparams YAML with a 'method' key; replaces the shipped sandbox preset of that method "
                         "(repeat for rome and memit)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0, help="orders the requests (a seeded shuffle of the valid records)")
    ap.add_argument("--out", type=Path, default=out)


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------------------------------
# Model


def resolve_model(args) -> Path:
    """``--model``, or the cached sandbox of the first ``--records`` records (built on first use)."""
    if not args.data.is_file():  # the requests come from it whatever the model
        die(f"{args.data}: CounterFact-train data not found (set FACTSMITH_SHARED_DATA or pass --data)")
    if args.model is not None:
        if not (args.model / "config.json").is_file():
            die(f"{args.model}: not a model directory (no config.json)")
        return args.model
    from sandbox import build_sandbox, load_facts, preset
    from sandbox.trainer import build_key

    facts = load_facts(args.data, limit=args.records)
    overrides = preset_overrides(args.sandbox)
    cfg = preset(SANDBOX_PRESET, **overrides)
    cache = home() / "cache" / "sandbox"
    out = cache / build_key(facts, cfg, SANDBOX_SEED)  # the cache entry itself: no copy
    t0 = time.perf_counter()
    print(f"sandbox: {len(facts.facts)} facts from the first {args.records} records, preset {SANDBOX_PRESET}"
          f"{''.join(f' {k}={v}' for k, v in overrides.items())} ({out})", file=sys.stderr, flush=True)
    r = build_sandbox(facts, out, cfg, seed=SANDBOX_SEED, preset_name=SANDBOX_PRESET, cache_dir=cache,
                      device=args.device)
    if not r.cached:
        print(f"sandbox: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return r.path


def preset_overrides(pairs: list[str], base: str = SANDBOX_PRESET) -> dict[str, Any]:
    """``KEY=VALUE`` pairs typed like the preset's fields; an unknown key or a bad value exits with its name."""
    from sandbox import preset

    fields = preset(base).to_dict()
    out: dict[str, Any] = {}
    for kv in pairs:
        key, sep, val = kv.partition("=")
        if not sep or key not in fields:
            die(f"{kv!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        try:
            out[key] = type(fields[key])(val)
        except ValueError:
            die(f"{kv!r}: {key} takes a {type(fields[key]).__name__}")
    return out


def load_hparams(paths: list[Path]) -> dict[str, Any]:
    """method -> hparams: the shipped sandbox presets, each replaced by a ``--hparams`` file for its method."""
    from editing import hparams, methods

    out = {m: hparams.default(m, "sandbox") for m in methods.names()}
    for p in paths:
        try:
            hp = hparams.load(p)
        except hparams.HparamsError as e:
            die(str(e))
        out[hp.method] = hp
    return out


# --------------------------------------------------------------------------------------------------
# Requests


def _norm(v: str) -> str:
    """Whitespace as sandbox.facts reads a field (CounterFact has newlines inside some prompts)."""
    return " ".join(v.split()) if any(c in v for c in "\t\n\r") else v.strip()


@dataclass
class RequestSet:
    requests: list  # EditRequest, in the seeded order
    records: int  # records read
    skipped: dict[str, int]  # reason -> count

    def describe(self) -> dict[str, Any]:
        return {"records_read": self.records, "valid": len(self.requests), "skipped": self.skipped}


def trained_facts(model_dir: Path, path: Path, records: int) -> tuple[dict, dict]:
    """What the model was trained on: {(subject, template): target} and {subject-less prompt: target}.

    From the sandbox's own facts.jsonl (one fact per line with ``prompts``, subject null for a
    neighbourhood prompt); for a model directory without one, the facts a sandbox of these records would
    be trained on (sandbox.load_facts, after its de-duplication)."""
    fj = model_dir / "facts.jsonl"
    if fj.is_file():
        facts = [json.loads(line) for line in fj.read_text(encoding="utf-8").split("\n") if line.strip()]
        pairs = [(f["subject"], f["prompts"][0] if "prompts" in f else f["prompt"], f["target"]) for f in facts]
    else:
        from sandbox import load_facts

        log.warning("%s has no facts.jsonl: assuming it was trained on the first %d records of %s",
                    model_dir, records, path)
        pairs = [(f.subject, f.prompts[0], f.target) for f in load_facts(path, limit=records).facts]
    subj = {(s, p): t for s, p, t in pairs if s is not None}
    bare = {p: t for s, p, t in pairs if s is None}
    return subj, bare


def load_requests(path: Path, records: int, model_dir: Path, seed: int) -> RequestSet:
    """CounterFact records -> EditRequests, keeping only records whose facts the sandbox was trained on.

    A record is used when its prompt contains the subject, the model was trained on its (subject, prompt)
    fact with the record's ground truth and on its locality prompt with the locality ground truth (the
    sandbox's de-duplication drops a second answer to one question), and no earlier record edits the same
    (subject, prompt) (MEMIT refuses two in one batch). Valid requests are shuffled with ``seed``.
    """
    from editing.requests import EditRequest

    rows = json.loads(path.read_text(encoding="utf-8"))[:records]
    subj_facts, bare_facts = trained_facts(model_dir, path, records)
    skipped: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        subject, prompt = _norm(r["subject"]), _norm(r["prompt"])
        truth, loc_p, loc_t = _norm(r["ground_truth"]), _norm(r["locality_prompt"]), _norm(r["locality_ground_truth"])
        at = prompt.find(subject)
        why = None
        if at < 0:
            why = "prompt lacks the subject"
        else:
            template = prompt[:at] + "{}" + prompt[at + len(subject):]
            if subj_facts.get((subject, template)) != truth:
                why = "fact not trained with this ground truth"
            elif bare_facts.get(loc_p) != loc_t:
                why = "neighbour not trained with this ground truth"
            elif (subject, template) in seen:
                why = "same subject and prompt as an earlier record"
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        seen.add((subject, template))
        out.append(EditRequest(subject=subject, prompt=template, target_new=_norm(r["target_new"]),
                               target_true=truth, id=str(r["case_id"]),
                               paraphrase_prompts=(_norm(r["rephrase_prompt"]),),
                               neighborhood_prompts=((loc_p, loc_t),)))
    random.Random(seed).shuffle(out)
    return RequestSet(out, len(rows), skipped)


@dataclass
class Bench:
    """What an editing benchmark starts from: the sandbox, its model, the requests, the editing cache."""

    model_dir: Path
    model: Any
    tokenizer: Any
    requests: RequestSet
    cache: Any  # editing.store.Cache


def open_bench(args) -> Bench:
    """The sandbox of ``--model`` (or built), loaded on ``--device``, with the valid requests of the first
    ``--records`` records of ``--data`` (the run dies when there are none)."""
    import torch

    from editing import modeldir
    from editing.store import Cache

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_dir = resolve_model(args)
    model, tok = modeldir.load(model_dir, args.device)
    rs = load_requests(args.data, args.records, model_dir, args.seed)
    if not rs.requests:
        die(f"no usable requests in the first {args.records} records of {args.data} ({rs.skipped})")
    print(f"requests: {len(rs.requests)} valid of {rs.records} records (skipped: {rs.skipped or 'none'})",
          file=sys.stderr)
    return Bench(model_dir, model, tok, rs, Cache(args.cache if args.cache is not None else home() / "cache"))


def trained_objects(model_dir: Path) -> set[str] | None:
    """Every answer the sandbox was trained to give (its facts.jsonl targets); None without a facts.jsonl.

    A CounterFact counterfactual is often a word the sandbox never learned to say after any prompt
    ("Karachi" as a place of death): no change at the subject's token makes a 4-layer model produce it
    reliably, so the benches report the scores of requests with a trained target apart."""
    fj = model_dir / "facts.jsonl"
    if not fj.is_file():
        return None
    return {json.loads(line)["target"] for line in fj.read_text(encoding="utf-8").split("\n") if line.strip()}


def ids_digest(requests) -> str:
    """Short hash of the request ids in order (which records a case edited, without listing them)."""
    return hashlib.sha256(",".join(r.id for r in requests).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# CounterFact scores


def score(model, tok, requests) -> list[dict[str, list]]:
    """Per request: {"rewrite" | "paraphrase" | "neighbour": [(nll_new, nll_true, top1_new, top1_true), ...]}, one
    tuple per prompt (for a neighbour, 'true' is its own ground truth and 'new' the request's new target).
    All prompts of all requests are scored in shared padded batches."""
    from editing.score import score_targets

    prompts: list[str] = []
    targets: list[str] = []
    index: list[tuple[str, int]] = []  # (kind, request) per (new, true) pair
    for j, r in enumerate(requests):
        pairs = [("rewrite", r.text, r.target_true)]
        pairs += [("paraphrase", p, r.target_true) for p in r.paraphrase_prompts]
        pairs += [("neighbour", p, t) for p, t in r.neighborhood_prompts]
        for kind, p, true in pairs:
            prompts += [p, p]
            targets += [r.target_new, true]
            index.append((kind, j))
    s = score_targets(model, tok, prompts, targets)
    out: list[dict[str, list]] = [{"rewrite": [], "paraphrase": [], "neighbour": []} for _ in requests]
    for n, (kind, j) in enumerate(index):
        new, true = s[2 * n], s[2 * n + 1]
        out[j][kind].append((new.mean_nll, true.mean_nll, new.argmax, true.argmax))
    return out


def merge_scores(parts: Iterable[dict[str, list]]) -> dict[str, list]:
    """The per-request scores of :func:`score` pooled by kind."""
    out: dict[str, list] = {"rewrite": [], "paraphrase": [], "neighbour": []}
    for p in parts:
        for k in out:
            out[k] += p[k]
    return out


def share(xs: list[bool]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize(before: dict[str, list], after: dict[str, list]) -> dict[str, Any]:
    """CounterFact's efficacy / paraphrase (p_new > p_true) and neighbourhood (p_true > p_new) scores,
    before and after; top-1 rates of the new target after, and of the true targets before (and of the
    neighbours' truths after)."""
    res: dict[str, Any] = {}
    for name, kind, flip in (("efficacy", "rewrite", False), ("paraphrase", "paraphrase", False),
                             ("neighbourhood", "neighbour", True)):
        for when, sc in (("", after), ("_before", before)):
            res[name + when] = share([(t < n) if flip else (n < t) for n, t, *_ in sc[kind]])
    res["efficacy_top1"] = share([a for _, _, a, _ in after["rewrite"]])
    res["paraphrase_top1"] = share([a for _, _, a, _ in after["paraphrase"]])
    res["efficacy_top1_before"] = share([a for _, _, a, _ in before["rewrite"]])
    # does the model know what is edited? greedy decoding gives the true target before the edit
    res["known_top1_before"] = share([b for *_, b in before["rewrite"]])
    res["paraphrase_known_top1_before"] = share([b for *_, b in before["paraphrase"]])
    res["neighbour_known_top1_before"] = share([b for *_, b in before["neighbour"]])
    res["neighbour_known_top1"] = share([b for *_, b in after["neighbour"]])
    return res


# --------------------------------------------------------------------------------------------------
# What the model says (greedy), as the gate judges it


# --------------------------------------------------------------------------------------------------
# Memory, timings, output


class PeakMemory:
    """Peak memory of one case. CPU: the process's peak RSS (ru_maxrss), reset at the start through
    /proc/self/clear_refs where Linux allows it (else it is the process's peak so far). CUDA:
    torch.cuda.max_memory_allocated since the start."""

    def __init__(self, device: str):
        self.device = device
        self.reset_ok = False

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.reset_ok = True
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets the peak RSS (VmHWM, ru_maxrss) to the current RSS
                self.reset_ok = True
            except OSError:
                self.reset_ok = False
        return self

    def __exit__(self, *exc) -> None:
        return None

    def read(self) -> dict[str, Any]:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return {"peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                    "peak_mem_kind": "cuda_allocated"}
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"peak_mem_mb": round(rss_kb / 1024, 1),
                "peak_mem_kind": "cpu_rss" if self.reset_ok else "cpu_rss_process_so_far"}


PHASES = ("templates", "stats", "keys", "targets", "solve", "total")


def add_timings(acc: dict[str, float], t: dict[str, float]) -> None:
    for k in PHASES:
        acc[k] = acc.get(k, 0.0) + t.get(k, 0.0)


def meta(args, command: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch
    import transformers

    m = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads, "device": args.device,
         "torch": torch.__version__, "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
         "command": command}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
    m.update(extra or {})
    return m


def command_line(module: str) -> str:
    return "python -m " + module + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")


def write_results(out: Path, meta_: dict[str, Any], rows: list[dict], order: list[str]) -> None:
    """Write {meta, rows}; rows of cases not run this time are kept from the previous file (the meta
    block describes this run only: a kept row carries its own ``run`` stamp)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"date": meta_["date"], "command": meta_["command"], "model": meta_.get("model_sha256")}
    rows = [{**r, "run": stamp} for r in rows]
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    merged = [r for r in old if r["case"] not in {x["case"] for x in rows}] + rows
    merged.sort(key=lambda r: order.index(r["case"]) if r["case"] in order else len(order))
    out.write_text(json.dumps({"meta": meta_, "rows": merged}, indent=2) + "\n")
    print(f"\nwrote {out}")


def fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "%":
        return f"{v:.1%}"
    if kind == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "n":
        return f"{v:,.0f}"
    return str(v)


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    """Print rows as a table; cols: (key, header, kind) with kind one of '%', 's', 'x', 'n', ''."""
    cells = [[fmt(r.get(k), kind) for k, _, kind in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h, _) in enumerate(cols)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h, _), w) in enumerate(zip(cols, widths)))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))


# --------------------------------------------------------------------------------------------------
# A fresh FACTSMITH_HOME for the pipeline benchmarks (chaos, concurrency)


def demo_home(tmp: Path, prefect_log_level: str = "WARNING") -> tuple[Path, Path, dict[str, str]]:
    """(the demo sandbox's directory, a fresh FACTSMITH_HOME, the environment of the ``factsmith`` processes) under
    ``tmp``: the sandbox built or reused from the user's sandbox cache, the home's editing cache the user's (the
    statistics are computed once), no Prefect or MLflow server inherited."""
    from sandbox import build_sandbox, preset, world_facts

    cache = home() / "cache"
    model_dir = tmp / "demo-sandbox"
    build_sandbox(world_facts(), model_dir, preset("demo"), 0, preset_name="demo", cache_dir=cache / "sandbox")
    h = tmp / "home"
    h.mkdir()
    (h / "cache").symlink_to(cache, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(FACTSMITH_HOME=str(h), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
               PREFECT_HOME=str(tmp / "prefect"), PREFECT_LOGGING_LEVEL=prefect_log_level)
    return model_dir, h, env
