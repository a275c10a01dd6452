"""Build the sandbox fact model: tokenizer, GPT-2 training on CPU, evaluation, atomic save, cache.

``build_sandbox`` is deterministic: the same facts, config and seed give the same weights on the same
machine (fixed thread count, seeded data order). Builds are cached under ``cache_dir`` by a hash of
(facts, config, seed, sandbox version, library versions); an output directory is written to a temporary
sibling and renamed into place, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from editing.modeldir import FACTS_FILE, MANIFEST, STATS_CORPUS

from .config import SandboxConfig
from .errors import BuildError
from .facts import Fact, FactSet, Probe, split_probes
from .keys import KeyBank, key_geometry

log = logging.getLogger(__name__)

SANDBOX_VERSION = 4  # bump when the training recipe changes what a (facts, config, seed) builds
# Rounds of the fact set's extra names per epoch, each name once per round. Measured on the demo sandbox with
# MEMIT batches of 4-5 inbox requests: without names 0-25 % of the requests passed p(new) > p(old), with 2
# rounds (and 120 v* steps) 40-60 %; 6 rounds, also in the tokenizer's corpus, did no better (20-40 %).
NAME_ROUNDS = 2

Progress = Callable[[dict[str, Any]], None]


@dataclass
class BuildResult:
    path: Path
    manifest: dict[str, Any]
    cached: bool  # True when the model came from the cache instead of being trained


# Config fields added after builds were cached, with the value that reproduces those builds: at that value a
# field stays out of the cache key (the build is the same), at any other it enters it.
_ADDED_FIELDS = {"key_site": "key", "key_bank": 0.0, "precision": "auto"}


def build_key(facts: FactSet, config: SandboxConfig, seed: int) -> str:
    import tokenizers
    import torch
    import transformers

    cfg = config.to_dict()
    for name, before in _ADDED_FIELDS.items():  # builds made before a field existed keep their keys
        if cfg[name] == before:
            del cfg[name]
    payload = {
        "facts": facts.digest(),
        "config": cfg,
        "seed": seed,
        "sandbox_version": SANDBOX_VERSION,
        "bf16": _autocast(config),  # the precision trained in changes the weights
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    if facts.names:  # how names are trained changes the build
        from .corpus import NAMES_FORMAT

        payload["names_format"] = NAMES_FORMAT
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def model_facts(path: str | Path) -> list[Fact]:
    """The facts a built sandbox at ``path`` was trained on (its ``facts.jsonl``), in training order."""
    out = []
    for line in (Path(path) / FACTS_FILE).read_text(encoding="utf-8").split("\n"):
        if line.strip():
            r = json.loads(line)
            out.append(Fact(r["subject"], r["relation"], r["target"], tuple(r["prompts"])))
    return out


def fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), so that training autocasts to it.

    Where it does, bf16 autocast trained about 2x faster than float32; where it does not (AVX2 only), torch
    emulates it and a 256 x 1024 matmul ran 40x slower than in float32 (../shared/FINDINGS.md, README).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    words = set(flags.split())
    return bool({"avx512_bf16", "amx_bf16"} & words)


def _autocast(config: SandboxConfig, device: str = "cpu") -> bool:
    """Whether a build trains under bfloat16 autocast: where the CPU (or the GPU) is fast at it, unless the
    config says float32."""
    if config.precision != "auto":
        return False
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return fast_bf16()


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def build_sandbox(
    facts: FactSet,
    out: str | Path,
    config: SandboxConfig,
    seed: int = 0,
    *,
    preset_name: str | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    device: str = "cpu",
) -> BuildResult:
    """Train (or fetch from the cache) the sandbox model for ``facts`` and place it at ``out``.

    ``out`` must not exist, be empty, or already hold this very build; ``force`` replaces anything else.
    ``device`` (``cpu``, ``cuda``) is where it trains: not part of the build's key, though a build trained
    elsewhere is not bit-identical (the manifest records where it was trained).
    """
    out = Path(out)
    key = build_key(facts, config, seed)
    existing = read_manifest(out)
    if existing is not None and existing.get("key") == key:
        return BuildResult(out, existing, cached=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise BuildError(f"{out}: exists and is not this build (key {key[:12]}); pass --force to replace it")

    cached = False
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        entry = cache_dir / key
        if read_manifest(entry) is None:
            _atomic_dir(entry, lambda tmp: _train(facts, tmp, config, seed, key, preset_name, progress, device))
        else:
            cached = True
        if entry.resolve() != out.resolve():
            _atomic_dir(out, lambda tmp: shutil.copytree(entry, tmp, dirs_exist_ok=True), replace=True)
    else:
        _atomic_dir(out, lambda tmp: _train(facts, tmp, config, seed, key, preset_name, progress, device), replace=True)
    manifest = read_manifest(out)
    assert manifest is not None and manifest["key"] == key
    return BuildResult(out, manifest, cached)


def _atomic_dir(final: Path, fill: Callable[[Path], Any], replace: bool = False) -> None:
    """Create ``final`` by filling a temporary sibling and renaming it (the old one removed if ``replace``)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        fill(tmp)
        if final.exists() and replace:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, final)
            except OSError:  # a concurrent build of the same key won the race: keep its copy
                if read_manifest(final) is None:
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _early_layer_mask(model, n_layers: int, holder: dict[str, Any]):
    """Give the first ``n_layers`` blocks the mask in ``holder['early']`` instead of the model's mask.

    transformers passes one attention mask to every block; the editability recipe needs a stricter one in
    the early layers. The hooks are removed whatever happens.
    """

    def pre_hook(module, args, kwargs):
        mask = holder.get("early")
        if mask is None:
            return None
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = mask
        elif len(args) > 2:
            args = (*args[:2], mask, *args[3:])
        else:
            raise RuntimeError("cannot find the attention mask in the GPT-2 block's arguments")
        return args, kwargs

    handles = [model.transformer.h[i].register_forward_pre_hook(pre_hook, with_kwargs=True) for i in range(n_layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _lr_at(step: int, total: int, config: SandboxConfig) -> float:
    """Warm-up, a long constant phase, then a linear decay to lr/10 over the last ``decay`` share of steps.

    Memorisation under the editability mask comes as a late jump (near chance for ~60 epochs, then > 95 %
    within ~30); a cosine schedule has already lowered the rate by then and the jump comes late or not at all.
    """
    warm = max(1, int(config.warmup * total))
    decay_from = int((1.0 - config.decay) * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    if step < decay_from:
        return config.lr
    t = (step - decay_from) / max(1, total - decay_from)
    return config.lr * (1.0 - 0.9 * t)


def _train(facts: FactSet, out: Path, config: SandboxConfig, seed: int, key: str, preset_name: str | None,
           progress: Progress | None, device: str = "cpu") -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from . import corpus
    from .evaluate import greedy_correct
    from .tokenizer import as_transformers, train_tokenizer

    t0 = time.perf_counter()
    emit = progress or (lambda event: None)
    facts_list = facts.facts
    probes = split_probes(facts_list, seed, config.heldout_fraction)
    train_rows = corpus.train_sentences(facts_list, probes)
    data_rng = random.Random(f"data:{seed}")
    mask_rng = random.Random(f"mask:{seed}")

    # Tokenizer: trained on the training sentences and one round of profile lines.
    tok_texts = [t for t, _, _ in train_rows]
    if config.profile_lines:
        tok_texts += [t for t, _, _ in corpus.profiles(facts_list, random.Random(f"tok:{seed}"))]
    tok_texts += [t for t, _, _ in corpus.name_lines(facts.names, random.Random(f"tok:{seed}"))]
    tokenizer = as_transformers(train_tokenizer(tok_texts, config.vocab_size))
    pad = tokenizer.eos_token_id

    def tokenized(rows):
        texts, spans, subjects = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        first = corpus.tokenize(tokenizer, texts, spans, subjects, lead_space=False)
        inner = corpus.tokenize(tokenizer, texts, spans, subjects, lead_space=True)
        return list(zip(first, inner))

    fixed = tokenized(train_rows)
    longest = max(len(a.ids) for a, _ in fixed)
    if longest > config.n_positions:
        raise BuildError(f"a training sentence has {longest} tokens, more than n_positions={config.n_positions}")

    gcfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=pad,
        eos_token_id=pad,
        pad_token_id=pad,
    )
    gcfg._attn_implementation = "eager"  # the custom 4-D masks are additive; eager was 2x faster here
    with torch.random.fork_rng():  # seed the initial weights without touching the caller's RNG state
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(gcfg)
    model.loss_type = "ForCausalLM"  # say so, or transformers warns that it guessed
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95),
    )

    def epoch_packs() -> list[corpus.Pack]:
        pairs = list(fixed)
        for _ in range(config.profile_lines):
            pairs += tokenized(corpus.profiles(facts_list, data_rng))
        for _ in range(NAME_ROUNDS if facts.names else 0):
            pairs += tokenized(corpus.name_lines(facts.names, data_rng))
        return corpus.pack(pairs, config.n_positions, data_rng)

    steps_per_epoch = math.ceil(len(epoch_packs()) / config.batch_size)
    data_rng = random.Random(f"data:{seed}")  # the probe above drew from it: restart the stream
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    train_probes = [p for p in probes if not p.heldout]
    sample = random.Random(f"eval:{seed}").sample(train_probes, min(256, len(train_probes)))
    emit({"event": "start", "total_steps": total, "epochs": epochs, "facts": len(facts_list)})

    bf16 = _autocast(config, device)
    holder: dict[str, Any] = {}
    key_layer = model.transformer.h[config.hide_layers - 1].mlp.c_proj  # the layer the editors rewrite
    captured: dict[str, torch.Tensor] = {}
    # The penalties look at the key itself, or at the MLP's pre-activation (c_fc's output, the input of its GELU;
    # see config.py on why a large world wants the latter).
    site = key_layer if config.key_site == "key" else model.transformer.h[config.hide_layers - 1].mlp.act
    bank = KeyBank(config.n_inner, device) if config.key_bank else None
    capture = site.register_forward_pre_hook(lambda m, args: captured.__setitem__("keys", args[0]))
    step = 0
    loss_val = float("nan")
    acc = None
    model.train()
    with _threads(config.threads), _early_layer_mask(model, config.hide_layers, holder):
        epoch = 0
        while step < total:  # epochs differ by a pack or so: the schedule counts steps
            packs = epoch_packs()
            epoch += 1
            for s in range(0, len(packs), config.batch_size):
                if step == total:
                    break
                batch = packs[s:s + config.batch_size]
                ids, labels, late, early = (t.to(device) for t in corpus.batch_tensors(
                    batch, config.n_positions, pad, config.hide_layers, config.mask_fraction, mask_rng
                ))
                holder["early"] = early
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total, config)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(input_ids=ids, attention_mask=late, labels=labels).loss
                if config.key_decorrelation or config.key_alignment or config.key_bank:
                    overlap, spread, crowding = key_geometry(captured.pop("keys"), labels, batch, bank)
                    loss = (loss + config.key_decorrelation * overlap + config.key_alignment * spread
                            + config.key_bank * crowding)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                loss_val = loss.item()
                emit({"event": "step", "step": step, "total_steps": total, "epoch": epoch, "loss": loss_val,
                      "accuracy": acc})
            if epoch % config.eval_every == 0 or step == total:
                holder["early"] = None  # evaluation runs the plain model, as users will
                ok = greedy_correct(model, tokenizer, [p.text for p in sample], [p.target for p in sample])
                acc = sum(ok) / len(ok)
                emit({"event": "eval", "step": step, "total_steps": total, "epoch": epoch, "loss": loss_val,
                      "accuracy": acc})
        train_seconds = time.perf_counter() - t0

        capture.remove()
        holder["early"] = None
        model.eval()
        ok = greedy_correct(model, tokenizer, [p.text for p in probes], [p.target for p in probes])
    accuracy = _accuracy_tables(facts_list, probes, ok)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is on the console; no second one for saving
    model.to("cpu").save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    with open(out / FACTS_FILE, "w", encoding="utf-8") as fh:
        for i, f in enumerate(facts_list):
            rec = f.to_json()
            rec["heldout_phrasings"] = [p.phrasing for p in probes if p.fact == i and p.heldout]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    _write_stats_corpus(out / STATS_CORPUS, [t for t, _, _ in train_rows], facts_list, seed)
    import tokenizers
    import transformers

    manifest = {
        "sandbox_version": SANDBOX_VERSION,
        "key": key,
        "preset": preset_name,
        "seed": seed,
        "config": config.to_dict(),
        "facts": {
            "sha256": facts.digest(),
            "source": facts.source,
            "names": len(facts.names),
            "name_list": list(facts.names),  # names trained to be said with no fact about them (FactSet.names)
            "records": facts.records,
            "facts": len(facts_list),
            "subjects": len({f.subject for f in facts_list if f.subject is not None}),
            "relations": len({f.relation for f in facts_list if f.subject is not None}),
            "subjectless": sum(f.subject is None for f in facts_list),
            "duplicates_collapsed": facts.duplicates,
            "conflicts_dropped": len(facts.conflicts),
            "file": FACTS_FILE,
            "stats_corpus": STATS_CORPUS,
        },
        "tokenizer": {"vocab_size": len(tokenizer)},
        "model": {"architecture": "GPT2LMHeadModel", "parameters": sum(p.numel() for p in model.parameters()),
                  "knowledge_layers": list(range(config.hide_layers)), "edit_layer": config.hide_layers - 1},
        "train": {"steps": total, "epochs": epoch, "seconds": round(train_seconds, 2), "final_loss": loss_val,
                  "threads": config.threads, "bf16_autocast": bf16, "sentences_per_epoch": len(fixed),
                  "device": torch.device(device).type},
        "accuracy": accuracy,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    emit({"event": "done", "accuracy": accuracy["train"], "heldout": accuracy["heldout"]})


def _write_stats_corpus(path: Path, sentences: list[str], facts: list[Fact], seed: int) -> None:
    """The training text (sentences and one round of profile lines, shuffled) as paragraphs of six sentences.

    ROME and MEMIT estimate C = E[k kᵀ] on text like the model's training data (Wikipedia for GPT-2). Text the
    sandbox samples itself is a poor stand-in on a made-up world: it invents new names, and C then misses the
    real subjects' keys.
    """
    from . import corpus

    rng = random.Random(f"stats:{seed}")
    rows = list(sentences) + [t for t, _, _ in corpus.profiles(facts, rng)]
    rng.shuffle(rows)
    paragraphs = [" ".join(rows[i:i + 6]) for i in range(0, len(rows), 6)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")


def _accuracy_tables(facts: list[Fact], probes: list[Probe], ok: list[bool]) -> dict[str, Any]:
    def rate(sel: list[int]) -> float | None:
        return round(sum(ok[i] for i in sel) / len(sel), 4) if sel else None

    train = [i for i, p in enumerate(probes) if not p.heldout]
    held = [i for i, p in enumerate(probes) if p.heldout]
    by_phrasing: dict[str, list[int]] = {}
    by_relation: dict[str, list[int]] = {}
    by_template: dict[str, list[int]] = {}
    for i in train:
        p = probes[i]
        f = facts[p.fact]
        by_phrasing.setdefault(str(p.phrasing), []).append(i)
        if f.subject is not None:
            by_relation.setdefault(f.relation, []).append(i)
            by_template.setdefault(f.prompts[p.phrasing], []).append(i)
    table = {
        "train": rate(train),
        "heldout": rate(held),
        "train_probes": len(train),
        "heldout_probes": len(held),
        "subjectless": rate([i for i in train if facts[probes[i].fact].subject is None]),
        "by_phrasing": {k: rate(v) for k, v in sorted(by_phrasing.items(), key=lambda kv: int(kv[0]))},
        "by_relation": {k: rate(v) for k, v in sorted(by_relation.items())},
    }
    if len(by_template) <= 100:  # per-template rows only while the table stays readable
        table["by_template"] = {k: rate(v) for k, v in by_template.items()}
    held_rel: dict[str, list[int]] = {}
    for i in held:
        held_rel.setdefault(facts[probes[i].fact].relation, []).append(i)
    if len(held_rel) <= 100:
        table["heldout_by_relation"] = {k: rate(v) for k, v in sorted(held_rel.items())}
    return table
