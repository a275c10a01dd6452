"""Benchmark: how the cost of an edit grows with the model — real shapes, random weights.

    python -m bench.scale [--models gpt2,gpt2-medium,gpt2-large,gpt2-xl,llama-1b] [--cases rome-1,memit-10,memit-100]
                          [--steps 3] [--stats-tokens 1024] [--device cpu] [--dtype float32] [--threads 2]
                          [--out bench/results/scale.json] [--plot bench/results/scale.png]

Quality aside, time and memory are honest: the models have the real shapes of GPT-2 124M / 355M / 774M / 1.5B
and of a 1B Llama (Llama 3.2 1B: 16 layers of 2,048, grouped-query attention, a 128,256-token vocabulary) with
random weights (no download), the GPT-2 tokenizer from ``../shared/data`` and CounterFact's subjects, prompts
and targets as requests (so the rows have real lengths). Layers as the shipped presets place them: MEMIT on
GPT-2 XL edits 13-17 of 48 and ROME 17; a shallower GPT-2 keeps the same relative depth; Llama the preset's 4-8
and 5. Per model and case, each phase of one edit:

* ``stats``: the covariance pass (:func:`editing.stats.compute_second_moments`, which stops at the highest
  edited layer) in seconds per 1,000 tokens, against a plain forward pass (``model(ids, mask)``, no grad) over
  the same batches: the throughput ratio (issue 24's goal ≥ 0.8);
* ``templates`` (the context prefixes sampled from the model), ``keys`` (with MEMIT, the subject's output at
  the top layer, read per layer), ``targets`` (the v* / z optimisation) as seconds per Adam step — each case runs
  ``--steps`` steps (the stop criterion off), each timed inside the optimisation; the step cost is the median
  of all but the first, and the fixed part (the bare prompts' and KL rows' pass, the prefix cache) is the rest
  of the phase — and ``solve``;
* the peak memory of each case (CPU RSS reset per case; CUDA max allocated) and the tokens one step runs.

From the curves, ``projection`` gives MEMIT 10,000 edits on GPT-J 6B (layers 3-8, 25 steps) on this machine and
on one GPU, from FLOPs counted per phase (stated in the JSON) at a stated GPU throughput.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from . import _common as C

TOKENIZER = C.SHARED / "gpt2-tokenizer"

# name -> (family, config). GPT-2 sizes from the released checkpoints; Llama 3.2 1B's shape.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12)),
    "gpt2-medium": ("gpt2", dict(n_embd=1024, n_layer=24, n_head=16)),
    "gpt2-large": ("gpt2", dict(n_embd=1280, n_layer=36, n_head=20)),
    "gpt2-xl": ("gpt2", dict(n_embd=1600, n_layer=48, n_head=25)),
    "llama-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                               rope_theta=500000.0, max_position_embeddings=2048)),
}
CASES = {"rome-1": ("rome", 1), "memit-10": ("memit", 10), "memit-100": ("memit", 100)}
# GPT-J 6B for the projection (MEMIT's paper setting): not built, counted
GPTJ = {"d": 4096, "layers": 28, "d_k": 16384, "vocab": 50400, "edit_layers": [3, 4, 5, 6, 7, 8], "steps": 25}


def build(name: str, seed: int = 0):
    import torch
    import transformers as tf

    family, cfg = SHAPES[name]
    if family == "gpt2":
        config = tf.GPT2Config(vocab_size=50257, n_positions=1024, **cfg)
    else:
        config = tf.LlamaConfig(bos_token_id=128000, eos_token_id=128001, **cfg)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def edit_layers(name: str, method: str) -> list[int]:
    """The presets' layers at the same relative depth (GPT-2: 13-17 / 17 of 48; Llama: 4-8 / 5)."""
    family, cfg = SHAPES[name]
    if family == "llama":
        return [4, 5, 6, 7, 8] if method == "memit" else [5]
    n = cfg["n_layer"]
    top = round(17 * n / 48)
    return list(range(max(0, top - 4), top + 1)) if method == "memit" else [top]


def params(model, lo: int, hi: int) -> int:
    """Parameters of blocks lo..hi-1."""
    from editing.arch import spec_for

    blocks = model.get_submodule(spec_for(model).layers)
    return sum(p.numel() for b in list(blocks)[lo:hi] for p in b.parameters())


def requests(n: int):
    """The first ``n`` CounterFact-train records with distinct subjects, as edit requests."""
    from editing.requests import EditRequest

    out, seen = [], set()
    for r in json.loads(C.COUNTERFACT.read_text()):
        subj, prompt = r["subject"], r["prompt"]
        if subj in seen or subj not in prompt:
            continue
        seen.add(subj)
        out.append(EditRequest(subj, prompt.replace(subj, "{}", 1), " " + r["target_new"], " " + r["ground_truth"],
                               id=str(r["case_id"])))
        if len(out) == n:
            return out
    raise ValueError(f"{C.COUNTERFACT}: fewer than {n} records with distinct subjects")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stats_row(name, model, layers: list[int], tokens: int, device: str, repeat: int) -> dict[str, Any]:
    """Seconds per 1,000 tokens of the covariance pass and of a plain forward over the same batches."""
    import torch

    from editing.stats import Corpus, compute_second_moments

    g = torch.Generator().manual_seed(0)
    seq = 128
    seqs = [torch.randint(0, 50257, (seq,), generator=g).tolist() for _ in range(max(1, tokens // seq))]
    corpus = Corpus("random", seqs, "random")
    n_tok = len(seqs) * seq

    def forward() -> None:
        with torch.no_grad():
            for b in range(0, len(seqs), 64):
                ids = torch.tensor(seqs[b:b + 64], device=device)
                model(input_ids=ids, attention_mask=torch.ones_like(ids))

    t_stats, t_fwd = [], []
    for _ in range(repeat):  # interleaved, best of each
        sync(device)
        t0 = time.perf_counter()
        compute_second_moments(model, layers, corpus)
        sync(device)
        t_stats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        forward()
        sync(device)
        t_fwd.append(time.perf_counter() - t0)
    s, f = min(t_stats), min(t_fwd)
    return {"stats_s_per_1k_tokens": s / n_tok * 1000, "forward_s_per_1k_tokens": f / n_tok * 1000,
            "stats_vs_forward": f / s, "stats_tokens": n_tok, "stats_layers": layers}


def case_row(name, model, tok, case: str, steps: int, device: str, store, variant: str = "after") -> dict[str, Any]:
    """One edit of ``case`` with ``steps`` target steps: phase times, step cost, peak memory. ``variant``
    "before": the references' algorithm as issue 25 found it — MEMIT's v* one request at a time
    (``batched_targets: false``) and every step over the whole rows (``target.prefix_cache: false``)."""
    import torch

    from editing import hparams as H
    from editing import methods
    from editing.arch import key_size
    from editing.context import context_templates
    from editing.hparams import with_changes
    from editing.methods.base import Inputs

    method, n = CASES[case]
    family = SHAPES[name][0]
    layers = edit_layers(name, method)
    base = H.default(method, family)
    common: dict[str, Any] = {"target__stop": "loss", "target__early_stop_loss": 0.0}  # every step runs
    if method == "memit":
        common.update({"layers": tuple(layers), "realize_rounds": 0, "split_depth": 0})
    else:
        common.update({"layer": layers[0]})
    reqs = requests(n)
    d_k = key_size(model, layers[0])
    g = torch.Generator().manual_seed(1)
    covs = {}
    for layer in layers:  # a random positive definite C: the solve's cost does not depend on its values
        a = torch.randn(d_k, d_k, generator=g, dtype=torch.float64) / math.sqrt(d_k)
        covs[layer] = a @ a.T + 1e-2 * torch.eye(d_k, dtype=torch.float64)
    if variant == "before":
        common["target__prefix_cache"] = False
        common["target__attention"] = "model"
        if method == "memit":
            common["batched_targets"] = False
    if variant in ("eager", "sdpa"):  # the presets with this attention kernel in the target steps
        common["target__attention"] = variant
    out: dict[str, Any] = {"model": name, "case": f"{name}/{case}" + ("" if variant == "after" else f"/{variant}"),
                           "method": method, "edits": n, "layers": layers, "d_k": d_k, "variant": variant}
    with C.PeakMemory(device) as mem:
        t0 = time.perf_counter()
        templates = context_templates(model, tok, base.target.context_templates, store, f"random-{name}")
        out["templates_s"] = time.perf_counter() - t0
        hp = with_changes(base, **common, target__v_steps=steps)
        sync(device)
        res = methods.of(hp).compute(Inputs(model, tok, reqs, hp, templates, covs, lambda *a: None))
        sync(device)
    out.update(mem.read())
    t = res.timings
    step_s = (res.details["target_step_seconds"] if method == "memit"
              else res.details["per_request"][0]["step_seconds"])  # each step's passes, timed inside
    assert len(step_s) == steps, step_s
    per_step = statistics.median(step_s[1:])  # the first step also allocates what the others reuse
    out.update({"steps": steps, "step_seconds": step_s, "target_step_s": per_step,
                "target_fixed_s": t["targets"] - sum(step_s), "targets_s": t["targets"], "keys_s": t["keys"],
                "solve_s": t["solve"], "target_step_s_per_edit": per_step / n})
    # positions one step runs above the z layer: each row from its subject's last token on (padding aside)
    from editing.targets import _rows

    rows = _rows(tok, reqs, templates, hp.target)
    out["step_tokens"] = sum(len(r.ids) - (r.subj if hp.target.prefix_cache else 0) for r in rows)
    return out


# --------------------------------------------------------------------------------------------------
# FLOPs and the projection


def flops_row(row: dict[str, Any], model) -> dict[str, Any]:
    """FLOPs counted per phase (2 per parameter per token forward; a target step runs the blocks above the z
    layer forward and back to δ, 4 per parameter per token; attention scores and the few logits left out)."""
    from editing.arch import n_layers

    z = row["layers"][-1]  # before issue 25 a step ran every block over the whole rows
    above = params(model, 0 if row.get("variant") == "before" else z + 1, n_layers(model))
    return {"params_above_z": above, "step_gflop": 4 * above * row["step_tokens"] / 1e9,
            "step_gflops_achieved": 4 * above * row["step_tokens"] / 1e9 / row["target_step_s"]
            if row["target_step_s"] > 0 else None}


def projection(rows: list[dict], stats_rows: list[dict], gpu_tflops: list[float]) -> dict[str, Any]:
    """MEMIT 10,000 edits on GPT-J 6B from the measured curves: on this machine, and on one GPU at each of
    ``gpu_tflops`` sustained for the forward/backward phases."""
    memit = [r for r in rows if r["method"] == "memit" and r.get("step_gflops_achieved")
             and r.get("variant", "after") == "after"]
    if not memit:
        return {}
    d, L = GPTJ["d"], GPTJ["layers"]
    block = 12 * d * d  # attention 4d², MLP 8d² (GPT-J's MLP is 4d wide)
    z = GPTJ["edit_layers"][-1]
    above = (L - z - 1) * block
    below = (z + 1) * block
    n, steps = 10_000, GPTJ["steps"]
    big = [r for r in memit if r["edits"] == max(x["edits"] for x in memit)]
    tok_per_edit = statistics.median(r["step_tokens"] / r["edits"] for r in big)  # GPT-2's tokenizer (as GPT-J's)
    cpu_rate = statistics.median(r["step_gflops_achieved"] for r in big) * 1e9
    target_flop = 4 * above * tok_per_edit * steps * n
    stat_tokens = 10_000 * 128  # the presets' statistics corpus
    stats_flop = 2 * below * stat_tokens
    stats_rate = statistics.median(2 * r["params_below"] * 1000 / r["stats_s_per_1k_tokens"] for r in stats_rows)
    # keys: measured seconds per edit per parameter of the largest model, scaled by GPT-J's parameters
    top = max(big, key=lambda r: r["params"])
    keys_s = top["keys_s"] / top["edits"] / top["params"] * (L * block) * n
    # the target optimisation's fixed part (the bare prompts' and KL rows' pass, the prefix cache): the same
    fixed_s = top["target_fixed_s"] / top["edits"] / top["params"] * (L * block) * n
    # solve: float64 on the CPU whatever the device; seconds per layer ~ c d_k³ (fitted), plus K Kᵀ over n keys
    c = statistics.median(r["solve_s"] / len(r["layers"]) / r["d_k"] ** 3 for r in memit)
    dk = GPTJ["d_k"]
    solve_s = len(GPTJ["edit_layers"]) * (c * dk ** 3 + c * 3 * dk * dk * n)
    cpu = {"targets_h": target_flop / cpu_rate / 3600, "targets_fixed_h": fixed_s / 3600,
           "stats_h": stats_flop / stats_rate / 3600, "keys_h": keys_s / 3600, "solve_h": solve_s / 3600}
    cpu["total_h"] = sum(cpu.values())
    gpus = {}
    for tf in gpu_tflops:  # the CPU-measured phases scaled by the ratio of rates; the solve stays on the CPU
        r = cpu_rate / (tf * 1e12)
        g = {"targets_h": target_flop / (tf * 1e12) / 3600, "targets_fixed_h": fixed_s * r / 3600,
             "stats_h": stats_flop / (tf * 1e12) / 3600, "keys_h": keys_s * r / 3600, "solve_h_on_this_cpu": solve_s / 3600}
        g["total_h"] = sum(g.values())
        gpus[f"{tf:g} TFLOP/s"] = g
    # memory: what one more edit of a batch costs (the prefix cache of its rows at every layer, and the step's
    # activations grow with d x layers), from the largest model measured at two batch sizes; the whole batch
    # does not fit one GPU, so the requests are optimised in chunks (their targets are independent)
    mem = {}
    by_model: dict[str, dict[int, float]] = {}
    for r in memit:
        by_model.setdefault(r["model"], {})[r["edits"]] = r["peak_mem_mb"]
    two = [(m, v) for m, v in by_model.items() if len(v) >= 2]
    if two:
        m, v = max(two, key=lambda mv: next(r["params"] for r in memit if r["model"] == mv[0]))
        (a, pa), (b, pb) = sorted(v.items())[0], sorted(v.items())[-1]
        shape = SHAPES[m][1]
        width, depth = shape.get("n_embd") or shape["hidden_size"], shape.get("n_layer") or shape["num_hidden_layers"]
        per_edit = (pb - pa) / (b - a) * (d * L) / (width * depth)  # MB, float32
        mem = {"from": m, "mb_per_edit_measured": (pb - pa) / (b - a), "gptj_mb_per_edit_float32": per_edit,
               "gptj_weights_gb_bfloat16": 12 * L * d * d * 2 / 1e9 + 2 * GPTJ["vocab"] * d * 2 / 1e9,
               "edits_per_chunk_80gb_bfloat16": int((80e3 - 12.5e3) / (per_edit / 2))}
    return {"model": "GPT-J 6B", "edits": n, "steps": steps, "edit_layers": GPTJ["edit_layers"], "memory": mem,
            "tokens_per_edit_step": tok_per_edit, "target_pflop": target_flop / 1e15, "stats_pflop": stats_flop / 1e15,
            "this_machine": cpu, "cpu_gflops_targets": cpu_rate / 1e9, "cpu_gflops_stats": stats_rate / 1e9,
            "one_gpu_at": gpus,
            "memit_paper": "7.44 h in all, 6.54 h of it the target vectors (GPT-J, 10,000 edits, one A6000)"}


def plot(rows: list[dict], stats_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for case in CASES:
        rs = sorted((r for r in rows if r["case"].endswith("/" + case)), key=lambda r: r["params"])
        if rs:
            ax[0, 0].loglog([r["params_above_z"] / 1e6 for r in rs], [r["target_step_s"] for r in rs], "o-", label=case)
            ax[0, 1].loglog([r["d_k"] for r in rs], [r["solve_s"] / len(r["layers"]) for r in rs], "o-", label=case)
            ax[1, 1].loglog([r["params"] / 1e6 for r in rs], [r["peak_mem_mb"] for r in rs], "o-", label=case)
    ss = sorted(stats_rows, key=lambda r: r["params"])
    ax[1, 0].plot([r["model"] for r in ss], [r["stats_s_per_1k_tokens"] for r in ss], "o-", label="statistics pass")
    ax[1, 0].plot([r["model"] for r in ss], [r["forward_s_per_1k_tokens"] for r in ss], "s--", label="plain forward")
    ax[0, 0].set(xlabel="parameters above the z layer (M)", ylabel="s per target step", title="target optimisation")
    ax[0, 1].set(xlabel="key width d_k", ylabel="s per layer", title="solve (float64, CPU)")
    ax[1, 0].set(ylabel="s per 1,000 tokens", title="statistics vs a forward pass")
    ax[1, 1].set(xlabel="parameters (M)", ylabel="peak MB", title="peak memory per case")
    for a in ax.flat:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------------


def save(args, rows: list[dict], stats_rows: list[dict]) -> dict[str, Any]:
    """Sort the rows, project, write the JSON; returns the projection."""
    import torch

    order = list(SHAPES)
    rows.sort(key=lambda r: (order.index(r["model"]), list(CASES).index(r["case"].split("/")[1])))
    stats_rows.sort(key=lambda r: order.index(r["model"]))
    proj = projection(rows, stats_rows, [float(x) for x in args.gpu_tflops.split(",") if x])
    meta = {"machine": C.platform.machine(), "cpus": C.os.cpu_count(), "threads": args.threads,
            "device": args.device, "dtype": args.dtype, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "command": C.command_line("bench.scale"), "steps": args.steps}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "stats": stats_rows, "rows": rows, "projection": proj}, indent=2) + "\n")
    return proj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--variants", default="after", help="comma-separated: after (the presets), before (issue 25's "
                                                         "baseline: one request's v* at a time, whole rows each step), eager, sdpa "
                                                         "(the presets with this attention kernel in the target steps)")
    ap.add_argument("--steps", type=int, default=3, help="target steps per case (each timed; the median of all but the "
                                                          "first is the step cost)")
    ap.add_argument("--stats-tokens", type=int, default=1024, help="tokens of the statistics / forward comparison")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side of the statistics comparison (best)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--gpu-tflops", default="50,300",
                    help="sustained TFLOP/s assumed for the projection on one GPU, comma-separated (50: float32 "
                         "and small batches; 300: bfloat16 near a third of an H100's dense peak)")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "scale.json")
    ap.add_argument("--plot", type=Path, default=C.RESULTS / "scale.png")
    ap.add_argument("--report", action="store_true",
                    help="measure nothing: recompute the projection, tables and plot from --out")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    cases = [c for c in args.cases.split(",") if c]
    for m in models:
        if m not in SHAPES:
            C.die(f"unknown model {m!r}; choose from {', '.join(SHAPES)}")
    for c in cases:
        if c not in CASES:
            C.die(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    if args.steps < 2:
        C.die("--steps must be at least 2 (the first step is not counted)")
    if not (TOKENIZER / "vocab.json").is_file() or not C.COUNTERFACT.is_file():
        C.die(f"needs the GPT-2 tokenizer ({TOKENIZER}) and CounterFact ({C.COUNTERFACT}); set FACTSMITH_SHARED_DATA")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from editing.arch import n_layers
    from editing.store import Cache

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    tok.pad_token = tok.eos_token
    dtype = getattr(torch, args.dtype)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    keep = lambda rs, done: [r for r in rs if r["model"] not in done]  # noqa: E731
    if args.report:
        models = []
    rows, stats_rows = keep(old.get("rows", []), models), keep(old.get("stats", []), models)
    with tempfile.TemporaryDirectory() as tmp:
        store = Cache(Path(tmp))
        for name in models:
            t0 = time.perf_counter()
            model = build(name).to(device=args.device, dtype=dtype)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"{name}: {n_params / 1e6:.0f} M parameters, built in {time.perf_counter() - t0:.0f} s", flush=True)
            layers = edit_layers(name, "memit")
            st = stats_row(name, model, layers, args.stats_tokens, args.device, args.repeat)
            st.update({"model": name, "params": n_params, "params_below": params(model, 0, layers[-1] + 1),
                       "layers": n_layers(model)})
            stats_rows.append(st)
            print(f"  statistics {st['stats_s_per_1k_tokens']:.2f} s / 1k tokens, forward "
                  f"{st['forward_s_per_1k_tokens']:.2f}: {st['stats_vs_forward']:.2f}x", flush=True)
            for case, variant in [(c, v) for c in cases for v in args.variants.split(",") if v]:
                r = case_row(name, model, tok, case, args.steps, args.device, store, variant)
                r.update({"params": n_params, "dtype": args.dtype, "device": args.device})
                r.update(flops_row(r, model))
                rows.append(r)
                save(args, rows, stats_rows)  # after every case: a crash (memory) keeps what was measured
                print(f"  {case}: step {r['target_step_s']:.2f} s ({r['step_tokens']} positions, "
                      f"{r['step_gflops_achieved'] or 0:.1f} GFLOP/s), fixed {r['target_fixed_s']:.2f} s, keys "
                      f"{r['keys_s']:.2f} s, solve {r['solve_s']:.2f} s, peak {r['peak_mem_mb']:.0f} MB", flush=True)
            del model
    proj = save(args, rows, stats_rows)
    print()
    C.table(stats_rows, [("model", "model", ""), ("params", "params", "n"), ("stats_s_per_1k_tokens", "stats s/1k tok", "s"),
                         ("forward_s_per_1k_tokens", "forward s/1k tok", "s"), ("stats_vs_forward", "ratio", "x")])
    print()
    C.table(rows, [("case", "case", ""), ("d_k", "d_k", "n"), ("templates_s", "templates", "s"),
                   ("keys_s", "keys", "s"), ("target_fixed_s", "v* fixed", "s"), ("target_step_s", "v* per step", "s"),
                   ("step_tokens", "positions/step", "n"), ("solve_s", "solve", "s"), ("peak_mem_mb", "peak MB", "n")])
    if proj:
        print("\nprojection, MEMIT 10,000 edits on GPT-J 6B:")
        for where, g in [("this machine", proj["this_machine"])] + [(f"one GPU at {k}", v)
                                                                     for k, v in proj["one_gpu_at"].items()]:
            print(f"  {where}: " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
        if proj.get("memory"):
            m = proj["memory"]
            print(f"  memory: {m['mb_per_edit_measured']:.0f} MB per edit of a batch on {m['from']}, "
                  f"{m['gptj_mb_per_edit_float32']:.0f} MB on GPT-J (float32): chunks of "
                  f"{m['edits_per_chunk_80gb_bfloat16']} edits on an 80 GB GPU in bfloat16")
    try:
        plot(rows, stats_rows, args.plot)
        print(f"wrote {args.out} and {args.plot}")
    except ImportError:
        print(f"wrote {args.out} (no matplotlib: no plot)")


if __name__ == "__main__":
    main()
