"""Keys and target vectors: the two things both ROME and MEMIT read from the model before solving.

* :func:`keys` — the input of an MLP output matrix at the subject's last token, averaged over context
  prefixes (one key per request).
* :func:`optimize_targets` — for each request, the vector δ that, added to one module's output at the
  subject's last token, makes the model say the new target: Adam on
  ``−log p(target | prefix + prompt) + kl_factor · KL(p_before ‖ p_after on essence prompts)
  + v_weight_decay · ‖δ‖ / ‖h‖²``, with ‖δ‖ clamped to ``clamp_norm_factor · ‖h‖`` and an early stop.

The optimisation is **batched**: all requests of a batch share padded forward passes, each request owning
one row of a (n, d) parameter. Every row's loss depends only on its own δ and Adam is elementwise, so the
trajectories are those of one-at-a-time optimisation (up to float summation order) while the forward passes
are shared — the loop over edits that costs MEMIT most of its time in the paper is gone. A request that
reaches the stop loss is frozen (its row restored after each step), exactly as if its loop had ended, and its
prompts leave the forward passes: a batch costs what its slowest requests still need, not every row every step.

A step runs each row only **from the subject's last token on** (``prefix_cache``): δ is added there, so no
position before it changes at any layer; those positions run once per plan and their keys and values are
cached. Nor does anything in the blocks up to δ's (δ enters the residual stream at that block's output): their
output on the suffix is recorded once too, and a step replays it plus δ and runs only the blocks above. Equal to
the whole rows' forward to float tolerance (tested on every family).

Requests about **one subject** (two relations of one country, say) share one δ, optimised on the sum of their
losses. They share a key too: the subject's last token comes before the relation's words, so its key is the
same whatever the prompt says after it (the prefix words before the subject move it little). Two separate δ for
one key are contradictory targets, and MEMIT's least-squares solve would split the difference and realise
neither (measured on the demo sandbox: see ``bench/README.md``). A subject with one request is optimised
exactly as before.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .arch import n_layers
from .hooks import StopForward, Trace, stop_after
from .methods.base import TargetHparams
from .requests import EditRequest
from .tokens import encode_edit

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One padded-batch row: a prompt (with a target to score, or an essence prompt to keep)."""

    ids: list[int]
    subj: int  # index of the subject's last token (where δ is added)
    start: int  # first target token (== len(ids) for an essence prompt; a keep row's first answer token held)
    req: int  # which request the row belongs to
    kind: str  # "rewrite" (a prompt with its new target), "essence" or "keep" (a prompt whose distribution stays)
    # where δ is added besides ``subj``: later occurrences of the subject's last token (TargetHparams.delta_at_repeats)
    repeats: tuple[int, ...] = ()


def _batches(rows: list[Row], size: int, key=lambda r: len(r.ids)) -> list[list[Row]]:
    order = sorted(rows, key=key)  # similar lengths together: less padding
    return [order[i:i + size] for i in range(0, len(order), size)]


def _by_length(rows: list[Row], size: int, length, overhead: int = 64) -> list[list[Row]]:
    """Rows cut into padded passes of at most ``size`` rows, the cuts placed where they save most: a pass costs
    its rows times its longest row, plus ``overhead`` positions (what one more forward costs). Exact over the
    distinct lengths (a few: dynamic programming over where each pass ends)."""
    order = sorted(rows, key=length)
    lens = [length(r) for r in order]
    ends = [i + 1 for i in range(len(order)) if i + 1 == len(order) or lens[i + 1] != lens[i]]  # group ends
    best = {0: (0.0, -1)}  # rows covered -> (cost, previous end)
    for j, e in enumerate(ends):
        for s in [0] + ends[:j]:
            n = e - s
            cost = best[s][0] + n * lens[e - 1] + overhead * -(-n // size)
            if e not in best or cost < best[e][0]:
                best[e] = (cost, s)
    cuts, e = [], len(order)
    while e > 0:
        s = best[e][1]
        cuts.append((s, e))
        e = s
    return [order[i:min(i + size, e)] for s, e in reversed(cuts) for i in range(s, e, size)]


def _pad(rows: list[Row], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):  # right padding: real tokens keep their positions
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
        att[i, :len(r.ids)] = 1
    return ids.to(device), att.to(device)


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if t is not None:
            return t
    return 0


def _with_prefix(template: str, prompt: str) -> str:
    """A context template (``"<text>. {}"``) wrapped around a request prompt that has its own ``{}``."""
    i = template.index("{}")
    return template[:i] + prompt + template[i + 2:]


@dataclass
class _Chunk:
    """One padded forward pass of the target optimisation, with its index tensors prepared once."""

    rows: list[Row]
    ids: torch.Tensor  # (B, T) token ids, right-padded
    att: torch.Tensor  # (B, T) attention mask
    rix: torch.Tensor  # (B,) request of each row
    bix: torch.Tensor  # (B,) 0..B-1
    six: torch.Tensor  # (B,) subject's last token of each row
    read: torch.Tensor  # (B, T) bool: the positions whose logits are read — a rewrite row's positions that
    #                     predict its target tokens, an essence row's last prompt position, a keep row's
    #                     positions from its last prompt token to its last held answer token. A step reads
    #                     the logits of these N entries only, flat, in row-major order (no head on padding).
    frow: torch.Tensor  # (N,) the row of each entry
    tgt: torch.Tensor  # (N,) the target token an entry predicts (0 for an essence or keep row's entry)
    msk: torch.Tensor  # (N,) 1 where an entry predicts a target token
    is_rw: torch.Tensor  # (B,) rewrite row (else essence or keep)
    eb: torch.Tensor  # (E,) the row of each essence and keep entry (a keep row has one per held answer token)
    eix: torch.Tensor  # (E,) the entry of each
    eref: torch.Tensor  # (E, V) their log p before the edit
    ew: torch.Tensor  # (E,) the weight of each one's KL in its request's loss (its row's, shared by its entries)
    ekeep: torch.Tensor  # (E,) a keep row (its answer is part of the argmax stop), else an essence row
    # (X,) δ added besides each row's ``six``: the row, the column and the request of each (Row.repeats)
    xb: torch.Tensor
    xs: torch.Tensor
    xr: torch.Tensor
    pre: "_Prefix | None" = None  # the positions before each row's subject token, run once (prefix_cache)


@dataclass
class _Prefix:
    """A chunk split at each row's subject token. δ is added at the subject's last token, so nothing at the
    positions before it changes while δ is optimised, at any layer: they are run once (their keys and values
    cached) and each step runs only the positions from the subject token on. Prefixes and suffixes are each
    right-padded; the pads in between are masked, and each real token keeps its own position id."""

    cache: list | None  # per layer, the prefix block's cached keys and values (None: no row has a prefix)
    ids: torch.Tensor  # (B, S) suffix tokens: row b's ids[subj:], right-padded
    att: torch.Tensor  # (B, P + S) attention mask over the prefix block and the suffix block
    pos: torch.Tensor  # (B, S) position ids of the suffix tokens: subj, subj + 1, ...
    read: torch.Tensor  # (B, S) bool: the chunk's read positions in suffix coordinates
    # With a _Below: the output of the blocks up to δ's on the suffix block, δ = 0 (B, S, d): a step adds δ to it
    # and runs only the blocks above
    hidden: torch.Tensor | None = None


@dataclass
class _Below:
    """Where δ enters the residual stream: the output of block ``upto`` (δ on the block's output, or on its MLP's
    output, which the pre-norm blocks of the architecture table add to the stream as it is). The blocks up to
    it then see nothing δ changes: a step replays their output and runs only the blocks above."""

    blocks: nn.ModuleList
    upto: int
    name: str  # the block's module name


class _Replay(nn.Module):
    """Stands in for a block below δ's during a step: returns the recorded output (the last one: plus δ)."""

    def __init__(self, block: nn.Module, out=None):
        super().__init__()
        self.out = out
        if hasattr(block, "attention_type"):  # some models pick each block's mask by it
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.out is None else self.out()


def _below(model: nn.Module, module_name: str) -> _Below | None:
    """The :class:`_Below` of ``module_name`` for a model of the architecture table, else None."""
    from .arch import ArchitectureError, module, n_layers, spec_for

    try:
        spec = spec_for(model)
        L = n_layers(model)
    except (ArchitectureError, AttributeError):
        return None
    for i in range(L):
        if module_name in (spec.layer(i), spec.mlp_at(i), spec.mlp_out_at(i)):
            return _Below(module(model, spec.layers), i, spec.layer(i))
    return None


def cache_kw(model: nn.Module) -> str | None:
    """The name of the forward argument that takes a key/value cache, where the model takes position ids and a
    Hugging Face cache (None: the prefix is not cached, every step runs the whole rows)."""
    params = inspect.signature(model.forward).parameters
    if not {"position_ids", "logits_to_keep"} <= set(params) or getattr(model, "config", None) is None:
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _run_to(r: Row) -> int:
    """How much of a row a step runs: a rewrite row's last target token predicts nothing that is read (the
    positions before it predict the target), and causal attention lets no earlier position see it."""
    return len(r.ids) - 1 if r.kind == "rewrite" else len(r.ids)


def _prefix(model: nn.Module, rows: list[Row], pad: int, device, read: torch.Tensor, kw: str,
            below: _Below | None = None) -> _Prefix:
    from transformers import DynamicCache

    B = len(rows)
    P = max(r.subj for r in rows)
    S = max(_run_to(r) - r.subj for r in rows)
    pre_ids = torch.full((B, P), pad, dtype=torch.long)
    pre_att = torch.zeros((B, P), dtype=torch.long)
    ids = torch.full((B, S), pad, dtype=torch.long)
    att = torch.zeros((B, S), dtype=torch.long)
    sread = torch.zeros((B, S), dtype=torch.bool)
    subj = torch.tensor([r.subj for r in rows])
    for b, r in enumerate(rows):
        n = _run_to(r) - r.subj
        pre_ids[b, :r.subj] = torch.tensor(r.ids[:r.subj], dtype=torch.long)
        pre_att[b, :r.subj] = 1
        ids[b, :n] = torch.tensor(r.ids[r.subj:r.subj + n])
        att[b, :n] = 1
        sread[b, :n] = read[b, r.subj:r.subj + n]
    assert int(sread.sum()) == int(read.sum()), "a read position before the subject's last token"
    data = None
    if P:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            # causal attention alone: a real token sees only the real tokens before it (the pads come after), and
            # a pad sees something, so no row is all-masked (a fully masked row can give NaN keys)
            # (only the cache is wanted: the head runs on one position, not on every prefix token)
            head = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
            model(input_ids=pre_ids.to(device), attention_mask=torch.ones_like(pre_att).to(device),
                  position_ids=torch.arange(P)[None].expand(B, P).to(device), use_cache=True, **{kw: cache}, **head)
        data = [tuple(layer) for layer in cache]  # (keys, values, sliding window) per layer
    pos = subj[:, None] + torch.arange(S)[None]
    pre = _Prefix(data, ids.to(device), torch.cat([pre_att, att], 1).to(device), pos.to(device), sread.to(device))
    if below is not None:
        extra = {kw: DynamicCache(data, config=model.config)} if data is not None else {}
        with torch.no_grad(), Trace(model, [below.name]) as tr, stop_after(model, below.name):
            try:  # the output of the blocks up to ``below.name``: nothing above it is needed
                model(input_ids=pre.ids, attention_mask=pre.att, position_ids=pre.pos, use_cache=bool(extra), **extra)
            except StopForward:
                pass
        pre.hidden = tr[below.name].output
    return pre


def _chunk(rows: list[Row], pad: int, device, kl_ref: dict[int, torch.Tensor], kl_w: dict[int, float],
           model: nn.Module | None = None, kw: str | None = None, below: _Below | None = None) -> _Chunk:
    ids, att = _pad(rows, pad, device)
    read = torch.zeros(ids.shape, dtype=torch.bool)
    frow: list[int] = []
    tgt: list[int] = []
    eix: list[int] = []
    eb: list[int] = []
    ew: list[float] = []
    for b, r in enumerate(rows):  # entries in row-major order, as a boolean mask selects them
        if r.kind == "rewrite":
            read[b, r.start - 1:len(r.ids) - 1] = True  # logits at j predict token j + 1
            tgt += r.ids[r.start:]
            frow += [b] * (len(r.ids) - r.start)
        else:
            m = len(r.ids) - r.start + 1  # an essence row's next token; a keep row's held answer tokens
            read[b, r.start - 1:len(r.ids)] = True
            eix += range(len(frow), len(frow) + m)
            eb += [b] * m
            ew += [kl_w[id(r)] / m] * m
            tgt += [0] * m
            frow += [b] * m
    erows = [b for b, r in enumerate(rows) if r.kind != "rewrite"]
    is_rw = torch.tensor([r.kind == "rewrite" for r in rows])
    frow_t = torch.tensor(frow)
    # δ's other positions: in suffix coordinates with a cached prefix; only those a step runs
    xs = [(b, q - (r.subj if kw is not None else 0), r.req) for b, r in enumerate(rows) for q in r.repeats
          if q < _run_to(r)]
    return _Chunk(
        rows, ids, att,
        rix=torch.tensor([r.req for r in rows], device=device),
        bix=torch.arange(len(rows), device=device),
        six=torch.tensor([0 if kw is not None else r.subj for r in rows], device=device),  # suffix: column 0
        read=read.to(device), frow=frow_t.to(device), tgt=torch.tensor(tgt).to(device),
        msk=is_rw[frow_t].float().to(device), is_rw=is_rw.to(device),
        eb=torch.tensor(eb, dtype=torch.long, device=device), eix=torch.tensor(eix, dtype=torch.long, device=device),
        eref=torch.cat([kl_ref[id(rows[b])] for b in erows]) if erows else torch.zeros(0, device=device),
        ew=torch.tensor(ew, device=device),
        ekeep=torch.tensor([rows[b].kind == "keep" for b in eb], dtype=torch.bool, device=device),
        xb=torch.tensor([x[0] for x in xs], dtype=torch.long, device=device),
        xs=torch.tensor([x[1] for x in xs], dtype=torch.long, device=device),
        xr=torch.tensor([x[2] for x in xs], dtype=torch.long, device=device),
        pre=_prefix(model, rows, pad, device, read, kw, below) if kw is not None else None,
    )


def _select(c: _Chunk, live: list[bool]) -> _Chunk | None:
    """The chunk's live rows only (None when none is): every tensor indexed along its rows, the cached prefix
    too, so nothing is run again when requests finish (the prefix pass was 15 % of an optimisation whose
    requests stopped at ten different steps when each stop ran it again)."""
    if all(live):
        return c
    if not any(live):
        return None
    dev = c.ids.device
    idx = torch.tensor([b for b, x in enumerate(live) if x], device=dev)
    new_of = {b: i for i, b in enumerate(idx.tolist())}
    e_keep = [i for i, b in enumerate(c.eb.tolist()) if b in new_of]
    e_ix = torch.tensor(e_keep, dtype=torch.long, device=dev)
    x_keep = torch.tensor([i for i, b in enumerate(c.xb.tolist()) if b in new_of], dtype=torch.long, device=dev)
    alive = torch.tensor(live, device=dev)
    ent = alive[c.frow].nonzero().squeeze(1)  # the live rows' entries, in order
    new_entry = torch.cumsum(alive[c.frow].long(), 0) - 1  # old entry -> new entry (where kept)
    remap = torch.full((len(live),), -1, dtype=torch.long, device=dev)
    remap[idx] = torch.arange(len(idx), device=dev)

    def rows_of(t):
        return t.index_select(0, idx.to(t.device)) if isinstance(t, torch.Tensor) and t.dim() and len(t) == len(live) else t

    pre = c.pre
    if pre is not None:
        pre = _Prefix([tuple(rows_of(t) for t in layer) for layer in pre.cache] if pre.cache is not None else None,
                      rows_of(pre.ids), rows_of(pre.att), rows_of(pre.pos), rows_of(pre.read),
                      rows_of(pre.hidden) if pre.hidden is not None else None)
    return _Chunk([c.rows[b] for b in idx.tolist()], rows_of(c.ids), rows_of(c.att), rix=rows_of(c.rix),
                  bix=torch.arange(len(idx), device=dev), six=rows_of(c.six), read=rows_of(c.read),
                  frow=remap[c.frow[ent]], tgt=c.tgt[ent], msk=c.msk[ent], is_rw=rows_of(c.is_rw),
                  eb=torch.tensor([new_of[b] for b in c.eb.tolist() if b in new_of], dtype=torch.long, device=dev),
                  eix=new_entry[c.eix.index_select(0, e_ix)] if len(c.eb) else c.eix,
                  eref=c.eref.index_select(0, e_ix) if len(c.eb) else c.eref,
                  ew=c.ew.index_select(0, e_ix) if len(c.eb) else c.ew,
                  ekeep=c.ekeep.index_select(0, e_ix) if len(c.eb) else c.ekeep,
                  xb=torch.tensor([new_of[b] for b in c.xb.tolist() if b in new_of], dtype=torch.long, device=dev),
                  xs=c.xs.index_select(0, x_keep), xr=c.xr.index_select(0, x_keep), pre=pre)


def _pad_to(t: torch.Tensor, dim: int, n: int, value=0) -> torch.Tensor:
    """``t`` padded at the end of ``dim`` to length ``n`` with ``value``."""
    if t.shape[dim] == n:
        return t
    shape = list(t.shape)
    shape[dim] = n - t.shape[dim]
    return torch.cat([t, t.new_full(shape, value)], dim)


def _merge(cs: list[_Chunk]) -> _Chunk:
    """One pass for the rows of several chunks of a cached prefix (:func:`_select`'s leftovers): each row's
    prefix and suffix padded to the longest, the pads masked, so every row's logits are its own pass's. The
    cached keys and values are joined, not run again."""
    if len(cs) == 1:
        return cs[0]
    dev = cs[0].ids.device
    rows_off = [0]
    ent_off = [0]
    for c in cs:
        rows_off.append(rows_off[-1] + len(c.rows))
        ent_off.append(ent_off[-1] + len(c.frow))
    T = max(c.ids.shape[1] for c in cs)
    pres = [c.pre for c in cs]
    assert all(p is not None for p in pres)
    S = max(p.ids.shape[1] for p in pres)
    Ps = [p.att.shape[1] - p.ids.shape[1] for p in pres]
    P = max(Ps)
    cache = None
    if P:
        ref = next(p.cache for p in pres if p.cache is not None)
        layers = []
        for li, layer in enumerate(ref):
            parts = []
            for k, t in enumerate(layer):
                if not isinstance(t, torch.Tensor) or t.dim() != 4:  # (a sliding window, the same for all)
                    parts.append(t)
                    continue
                each = []
                for c, p in zip(cs, pres):
                    if p.cache is None:  # no row of this chunk has a prefix: masked zeros
                        each.append(t.new_zeros((len(c.rows), t.shape[1], P, t.shape[3])))
                    else:
                        each.append(_pad_to(p.cache[li][k], 2, P))
                parts.append(torch.cat(each))
            layers.append(tuple(parts))
        cache = layers
    att = torch.cat([torch.cat([_pad_to(p.att[:, :Pi], 1, P), _pad_to(p.att[:, Pi:], 1, S)], 1)
                     for p, Pi in zip(pres, Ps)])
    hidden = None
    if all(p.hidden is not None for p in pres):
        hidden = torch.cat([_pad_to(p.hidden, 1, S) for p in pres])
    pre = _Prefix(cache, torch.cat([_pad_to(p.ids, 1, S) for p in pres]), att,
                  torch.cat([_pad_to(p.pos, 1, S) for p in pres]),
                  torch.cat([_pad_to(p.read, 1, S, False) for p in pres]), hidden)

    def cat(name, offsets=None):
        ts = [getattr(c, name) for c in cs]
        if offsets is not None:
            ts = [t + o for t, o in zip(ts, offsets)]
        return torch.cat(ts)

    eref = [c.eref for c in cs if len(c.eb)]
    return _Chunk(sum((c.rows for c in cs), []), torch.cat([_pad_to(c.ids, 1, T) for c in cs]),
                  torch.cat([_pad_to(c.att, 1, T) for c in cs]), rix=cat("rix"),
                  bix=torch.arange(rows_off[-1], device=dev), six=cat("six"),
                  read=torch.cat([_pad_to(c.read, 1, T, False) for c in cs]), frow=cat("frow", rows_off),
                  tgt=cat("tgt"), msk=cat("msk"), is_rw=cat("is_rw"), eb=cat("eb", rows_off),
                  eix=cat("eix", ent_off), eref=torch.cat(eref) if eref else cs[0].eref, ew=cat("ew"),
                  ekeep=cat("ekeep"), xb=cat("xb", rows_off), xs=cat("xs"), xr=cat("xr"), pre=pre)


def _coalesce(chunks: list[_Chunk], size: int, overhead: int = 64) -> list[_Chunk]:
    """Chunks that rows have left, merged into fewer passes of at most ``size`` rows where that costs less
    (a pass costs its rows times its longest suffix, plus ``overhead`` positions, as :func:`_by_length` plans):
    the last subjects of a batch would otherwise run in many small passes, each paying a pass's overhead."""
    if len(chunks) < 2 or any(c.pre is None for c in chunks):
        return chunks
    order = sorted(chunks, key=lambda c: c.pre.ids.shape[1])  # by suffix length: the last one is the longest
    out: list[list[_Chunk]] = [[order[0]]]
    for c in order[1:]:
        group = out[-1]
        n = sum(len(g.rows) for g in group)
        # together the group's rows pad to c's suffix; apart c's pass costs one overhead more
        if n + len(c.rows) <= size and n * (c.pre.ids.shape[1] - group[-1].pre.ids.shape[1]) <= overhead:
            group.append(c)
        else:
            out.append([c])
    return [_merge(g) for g in out]


def _chunk_logits(model: nn.Module, c: _Chunk, kw: str | None, name: str, add, below: _Below | None = None
                  ) -> torch.Tensor:
    """(N, V): the logits at the chunk's read positions (its entries), δ added by ``add(name, hidden)`` at column ``c.six``:
    to the replayed output of the blocks below it (``below``, with a cached prefix), else by a hook on ``name``.
    With a cached prefix only the suffix block runs, on a fresh cache holding the prefix's keys and values (a
    cache the step appended to would tie the next step to this step's graph)."""
    if c.pre is None:
        with Trace(model, [name], edit_output=add, retain_output=False):
            return _logits_at(model, c.ids, c.att, c.read)
    p = c.pre
    extra = {}
    if p.cache is not None:
        from transformers import DynamicCache

        extra = {kw: DynamicCache(p.cache, config=model.config)}

    def forward():
        logits = model(input_ids=p.ids, attention_mask=p.att, position_ids=p.pos, use_cache=bool(extra),
                       logits_to_keep=p.read, **extra).logits
        return logits[p.read] if logits.dim() == 3 else logits  # (a model that does not flatten a mask)

    if below is None or p.hidden is None:
        with Trace(model, [name], edit_output=add, retain_output=False):
            return forward()
    saved = [below.blocks[i] for i in range(below.upto + 1)]
    try:
        for i, block in enumerate(saved):
            below.blocks[i] = _Replay(block, (lambda: add(name, p.hidden)) if i == below.upto else None)
        return forward()
    finally:
        for i, block in enumerate(saved):
            below.blocks[i] = block


def _logits_at(model: nn.Module, ids: torch.Tensor, att: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The logits at chosen positions only: ``keep`` (B, K) positions of each row give (B, K, V); a boolean
    ``keep`` (B, T) gives (N, V), the N positions it marks in row-major order. Hugging Face models take either as
    ``logits_to_keep`` and run only those through the LM head (for a small model with a large vocabulary the
    head is a large part of a step); others compute every position and gather."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        logits = model(input_ids=ids, attention_mask=att, logits_to_keep=keep).logits
        return logits[keep] if keep.dtype == torch.bool and logits.dim() == 3 else logits
    logits = model(input_ids=ids, attention_mask=att).logits
    if keep.dtype == torch.bool:
        return logits[keep]
    return torch.take_along_dim(logits, keep[..., None], dim=1)


def _forward_to(model: nn.Module, module_name: str, ids: torch.Tensor, att: torch.Tensor) -> None:
    """A forward pass that ends once ``module_name`` has run: the layers above it and the logits are not needed
    to read its input or output (on GPT-2 small they were two thirds of the keys phase)."""
    with stop_after(model, module_name):
        try:
            model(input_ids=ids, attention_mask=att)
        except StopForward:
            pass


def _key_rows(tokenizer, requests: list[EditRequest], templates: list[str]) -> list[Row]:
    """The prompts a request's key is read on: each template wrapped around its prompt, and its other phrasings
    (the subject at the start of the text), which join its target too."""
    rows = [Row(*encode_edit(tokenizer, _with_prefix(t, r.prompt), r.subject), req=j, kind="key")
            for j, r in enumerate(requests) for t in templates]
    rows += [Row(*encode_edit(tokenizer, t, r.subject), req=j, kind="key")
             for j, r in enumerate(requests) for t in r.rewrite_prompts if t != r.prompt]
    return rows


@torch.no_grad()
def _each_key(model: nn.Module, tokenizer, module_name: str, rows: list[Row], batch_size: int):
    """(row, its key as float64 on the CPU) for every row: the input of ``module_name`` at the subject's last token."""
    device = next(model.parameters()).device
    for chunk in _batches(rows, batch_size):
        ids, att = _pad(chunk, _pad_id(tokenizer), device)
        with Trace(model, [module_name], retain_input=True, retain_output=False) as tr:
            _forward_to(model, module_name, ids, att)
        x = tr[module_name].input  # (B, T, d_k)
        for b, r in enumerate(chunk):
            yield r, x[b, r.subj].double().cpu()


def keys(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest], templates: list[str],
         batch_size: int = 256) -> torch.Tensor:
    """(n, d_k) float32: the input of ``module_name`` at each request's subject's last token, averaged over
    ``templates`` (each wrapped around the request's prompt) and the request's ``rewrite_prompts``."""
    rows = _key_rows(tokenizer, requests, templates)
    count = torch.tensor([sum(1 for r in rows if r.req == j) for j in range(len(requests))], dtype=torch.float64)
    acc: torch.Tensor | None = None
    for r, k in _each_key(model, tokenizer, module_name, rows, batch_size):
        if acc is None:
            acc = torch.zeros(len(requests), k.shape[0], dtype=torch.float64)
        acc[r.req] += k
    assert acc is not None
    return (acc / count[:, None]).float()


def key_moments(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest], templates: list[str],
                batch_size: int = 256) -> torch.Tensor:
    """(d_k, d_k) float64: Σ over requests of the mean k kᵀ over the prompts its key is read on (:func:`keys`'
    rows), where ``keys`` gives the mean k. What a request's key does on each of its prompts, not on their mean."""
    rows = _key_rows(tokenizer, requests, templates)
    count = [sum(1 for r in rows if r.req == j) for j in range(len(requests))]
    acc: torch.Tensor | None = None
    ks: list[torch.Tensor] = []
    ws: list[float] = []

    def add() -> None:  # one product per forward batch: a d_k x d_k outer product per row was 2/3 of an AlphaEdit
        nonlocal acc  # run on the 4,096-wide sandbox (105 of 157 s for 50 requests x 21 prompts)
        K = torch.stack(ks)  # (rows, d_k) float64
        m = K.T @ (K * torch.tensor(ws, dtype=torch.float64)[:, None])
        acc = m if acc is None else acc + m
        ks.clear()
        ws.clear()

    for r, k in _each_key(model, tokenizer, module_name, rows, batch_size):
        ks.append(k)
        ws.append(1.0 / count[r.req])
        if len(ks) == batch_size:
            add()
    if ks:
        add()
    assert acc is not None
    return (acc + acc.T) / 2


@torch.no_grad()
def outputs_at_subject(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest],
                       batch_size: int = 256) -> torch.Tensor:
    """(n, d) float32: the output hidden state of ``module_name`` at the subject's last token of each request's
    own prompt (no prefix)."""
    rows = [Row(*encode_edit(tokenizer, r.prompt, r.subject), req=j, kind="out") for j, r in enumerate(requests)]
    device = next(model.parameters()).device
    out: torch.Tensor | None = None
    for chunk in _batches(rows, batch_size):
        ids, att = _pad(chunk, _pad_id(tokenizer), device)
        with Trace(model, [module_name]) as tr:
            _forward_to(model, module_name, ids, att)
        h = tr[module_name].output  # (B, T, d)
        if out is None:
            out = torch.zeros(len(requests), h.shape[-1])
        for b, r in enumerate(chunk):
            out[r.req] = h[b, r.subj].float().cpu()
    assert out is not None
    return out


def target_leads(model: nn.Module, tokenizer, requests: list[EditRequest], batch_size: int = 64) -> torch.Tensor:
    """(n,) float32: how far each request's new target leads on its own prompt (no prefix), teacher-forced: the
    smallest, over the target's tokens, of log p(target token) − the largest log p of any other token. Above 0
    greedy decoding says the target; the lead is how much a later change may move it before it does not."""
    rows = [Row(*encode_edit(tokenizer, r.prompt, r.subject, r.target_new), req=j, kind="rewrite")
            for j, r in enumerate(requests)]
    device = next(model.parameters()).device
    out = torch.full((len(requests),), float("inf"))
    with torch.no_grad():
        for chunk in _batches(rows, batch_size):
            ids, att = _pad(chunk, _pad_id(tokenizer), device)
            logits = model(input_ids=ids, attention_mask=att).logits.float()  # (B, T, V)
            for b, r in enumerate(chunk):
                at = torch.arange(r.start - 1, len(r.ids) - 1, device=device)  # positions predicting the target
                tgt = ids[b, r.start:len(r.ids)]
                lp = logits[b, at]  # (t, V); logits differ from log-probs by a per-position constant
                mine = lp.gather(-1, tgt[:, None]).squeeze(-1)
                other = lp.scatter(-1, tgt[:, None], float("-inf")).max(-1).values
                out[r.req] = float((mine - other).min())
    return out


@dataclass
class Targets:
    delta: torch.Tensor  # (n, d) δ per request, float32 (equal rows for requests of one subject)
    init: torch.Tensor  # (n, d) the module's output h at the subject's last token of the bare prompt
    nll: list[float]  # final mean −log p(target) per token, per request
    loss: list[float]  # final total loss per request
    steps: list[int]  # optimisation steps each request took
    seconds: float
    step_seconds: list[float] = field(default_factory=list)  # each step's forward and backward passes, in order
    chunks: int = 1  # request chunks optimised one after another (a batch larger than memory is streamed)


def _rows(tokenizer, requests: list[EditRequest], templates: list[str], hp: TargetHparams) -> list[Row]:
    rows = []
    changing: dict[str, set[str]] = {}
    for r in requests:
        changing.setdefault(r.subject, set()).add(r.prompt)
    kept: set[tuple[str, str]] = set()
    for j, r in enumerate(requests):
        for t in templates:
            rows.append(Row(*encode_edit(tokenizer, _with_prefix(t, r.prompt), r.subject, r.target_new), req=j,
                            kind="rewrite"))
        for t in r.rewrite_prompts:
            if t != r.prompt:
                rows.append(Row(*encode_edit(tokenizer, t, r.subject, r.target_new), req=j, kind="rewrite"))
        for e in hp.essence_prompts:
            if e not in changing[r.subject]:  # a prompt this batch rewrites for the subject: not one to keep
                rows.append(Row(*encode_edit(tokenizer, e, r.subject), req=j, kind="essence"))
        for k in r.keep_prompts:  # once per subject: requests about one subject share their δ
            if k not in changing[r.subject] and (r.subject, k) not in kept:
                kept.add((r.subject, k))
                rows.append(Row(*encode_edit(tokenizer, k, r.subject), req=j, kind="keep"))
    return rows


@torch.no_grad()
def _with_answers(model: nn.Module, rows: list[Row], tokens: int, pad: int, device, batch_size: int) -> list[Row]:
    """Each keep row with the first ``tokens`` − 1 tokens of the model's greedy answer appended (teacher-forced:
    the step holds the distribution at its last prompt position and at each of those), the others as they are."""
    keep = [r for r in rows if r.kind == "keep"]
    grown = {id(r): list(r.ids) for r in keep}
    was_training = model.training
    model.eval()
    try:
        for _ in range(tokens - 1):
            for chunk in _batches(keep, batch_size, key=lambda r: len(grown[id(r)])):
                cur = [Row(grown[id(r)], r.subj, len(grown[id(r)]), r.req, r.kind) for r in chunk]
                ids, att = _pad(cur, pad, device)
                last = torch.tensor([[len(x.ids) - 1] for x in cur], device=device)  # (B, 1)
                nxt = _logits_at(model, ids, att, last)[:, 0].argmax(-1).tolist()  # (B,)
                for r, t in zip(chunk, nxt):
                    grown[id(r)].append(int(t))
    finally:
        model.train(was_training)
    return [replace(r, ids=grown[id(r)]) if r.kind == "keep" else r for r in rows]


def _with_repeats(tokenizer, rows: list[Row], requests: list[EditRequest]) -> list[Row]:
    """Each row with the later occurrences of its subject's tokens (as a word, or as the text's start) marked:
    δ is added at the last token of each as at the subject's (:attr:`Row.repeats`)."""
    pats: dict[str, list[list[int]]] = {}
    for r in requests:
        if r.subject not in pats:
            forms = {tuple(tokenizer(f, add_special_tokens=False)["input_ids"]) for f in (" " + r.subject, r.subject)}
            pats[r.subject] = [list(f) for f in forms if f]
    out = []
    for row in rows:
        ids, found = row.ids, set()
        for pat in pats[requests[row.req].subject]:
            k = len(pat)
            found.update(i + k - 1 for i in range(row.subj + 1, len(ids) - k + 1) if ids[i:i + k] == pat)
        out.append(replace(row, repeats=tuple(sorted(found))) if found else row)
    return out


def bytes_per_position(model: nn.Module) -> int:
    """What one row position held across a target step costs, roughly (float32): its logits, log-softmax and
    their gradient (3 V) and what every block keeps for the backward pass (~14 d per layer). Fitted to the peaks
    measured by ``bench/scale.py`` (GPT-2 124M-774M, MEMIT 10 against 100: 0.79 / 1.8 / 3.2 MB a position;
    this gives 1.1 / 2.0 / 3.8 MB)."""
    vocab, d = model.get_input_embeddings().weight.shape
    return 4 * (3 * vocab + 14 * d * n_layers(model))


def memory_budget(device: torch.device) -> int:
    """Bytes a target chunk may take: half of what the device has free (CUDA) or the machine has available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 << 30


def request_chunks(requests: list[EditRequest], positions: list[int], budget_positions: int,
                   max_requests: int = 0) -> list[list[int]]:
    """Request indices in chunks of at most ``budget_positions`` row positions (and ``max_requests`` requests when
    that is set), in order; the requests about one subject stay in one chunk (they share a δ). A subject group
    larger than the budget is a chunk of its own."""
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(requests):
        groups.setdefault(r.subject, []).append(j)
    chunks: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for idx in groups.values():
        cost = sum(positions[j] for j in idx)
        if cur and (used + cost > budget_positions or (max_requests and len(cur) + len(idx) > max_requests)):
            chunks.append(cur)
            cur, used = [], 0
        cur += idx
        used += cost
    if cur:
        chunks.append(cur)
    return chunks


def optimize_targets(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest],
                     templates: list[str], hp: TargetHparams,
                     progress: Callable[[int, int], None] | None = None) -> Targets:
    """Optimise one δ per request, added to ``module_name``'s output at the subject's last token.

    ``templates[0]`` must be ``"{}"`` (the bare prompt): h, the activation δ is measured against, is read
    there. The model's weights are never changed (and get no gradients).

    A batch larger than memory is **streamed**: each request's loss depends on its own δ only, so the requests
    are optimised in chunks one after another (a subject's requests together) with the trajectories of one
    batch (up to float summation order). A chunk holds at most ``hp.chunk_requests`` requests (0: no limit) and
    the row positions that :func:`memory_budget` allows at :func:`bytes_per_position`; ``progress(done, total)``
    after each chunk.
    """
    if not templates or templates[0] != "{}":
        raise ValueError(f"templates[0] must be the bare '{{}}', found {templates[:1]}")
    rows = _rows(tokenizer, requests, templates, hp)
    positions = [0] * len(requests)
    for r in rows:
        positions[r.req] += len(r.ids)
    device = next(model.parameters()).device
    budget = max(1, memory_budget(device) // bytes_per_position(model))
    chunks = request_chunks(requests, positions, budget, hp.chunk_requests)
    if len(chunks) == 1:
        out = _optimize(model, tokenizer, module_name, requests, templates, hp)
        if progress:
            progress(len(requests), len(requests))
        return out
    t0 = time.perf_counter()
    n = len(requests)
    delta: list[torch.Tensor | None] = [None] * n
    init: list[torch.Tensor | None] = [None] * n
    nll, loss, steps = [float("nan")] * n, [float("nan")] * n, [0] * n
    step_seconds: list[float] = []
    done = 0
    for idx in chunks:
        part = _optimize(model, tokenizer, module_name, [requests[j] for j in idx], templates, hp)
        for i, j in enumerate(idx):
            delta[j], init[j] = part.delta[i], part.init[i]
            nll[j], loss[j], steps[j] = part.nll[i], part.loss[i], part.steps[i]
        step_seconds += part.step_seconds
        done += len(idx)
        log.info("targets: %d of %d requests (chunk of %d)", done, n, len(idx))
        if progress:
            progress(done, n)
    return Targets(torch.stack(delta), torch.stack(init), nll, loss, steps, time.perf_counter() - t0, step_seconds,
                   chunks=len(chunks))


@contextmanager
def attention(model: nn.Module, choice: str):
    """The model with the attention kernel ``choice`` (TargetHparams.attention: "model", "eager", "sdpa") for
    the time of the block, set back after it. A model that cannot switch (not a Hugging Face model, or one with a
    kernel of its own) keeps its own."""
    want = None if choice == "model" else choice
    config = getattr(model, "config", None)
    was = getattr(config, "_attn_implementation", None)
    if want is None or was is None or was == want or not hasattr(model, "set_attn_implementation"):
        yield
        return
    try:
        model.set_attn_implementation(want)
    except (ValueError, ImportError) as e:  # a model that does not support it
        log.info("attention: keeping %s (%s)", was, e)
        yield
        return
    try:
        yield
    finally:
        model.set_attn_implementation(was)


def _optimize(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest],
              templates: list[str], hp: TargetHparams) -> Targets:
    """:func:`optimize_targets` on one chunk: every request's rows in the same padded passes."""
    with attention(model, hp.attention):
        return _optimize_rows(model, tokenizer, module_name, requests, templates, hp)


def _optimize_rows(model: nn.Module, tokenizer, module_name: str, requests: list[EditRequest],
                   templates: list[str], hp: TargetHparams) -> Targets:
    t0 = time.perf_counter()
    n = len(requests)
    rows = _rows(tokenizer, requests, templates, hp)
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    if hp.keep_tokens > 1:
        rows = _with_answers(model, rows, hp.keep_tokens, pad, device, hp.batch_prompts)
    if hp.delta_at_repeats:
        rows = _with_repeats(tokenizer, rows, requests)
    n_rewrite = torch.tensor([sum(1 for r in rows if r.req == j and r.kind == "rewrite") for j in range(n)],
                             dtype=torch.float32, device=device)  # (n,) rewrite rows per request
    # KL weight of each essence and keep row: each kind's mean over the request's rows, times its factor
    per = {(j, k): 0 for j in range(n) for k in ("essence", "keep")}
    for r in rows:
        if r.kind != "rewrite":
            per[(r.req, r.kind)] += 1
    factor = {"essence": hp.kl_factor, "keep": hp.keep_factor}
    kl_w = {id(r): factor[r.kind] / per[(r.req, r.kind)] for r in rows if r.kind != "rewrite"}
    base_rows = {j: next(i for i, r in enumerate(rows) if r.req == j and r.kind == "rewrite") for j in range(n)}
    subjects = list(dict.fromkeys(r.subject for r in requests))
    group = torch.tensor([subjects.index(r.subject) for r in requests], device=device)  # (n,) request -> δ row
    G = len(subjects)

    # Pass 0 (δ = 0, no grad): h per request (on its bare prompt), and the essence and keep distributions to
    # keep. Only those rows: the other rewrite rows are most of a batch, and nothing here needs them.
    need = [rows[base_rows[j]] for j in range(n)] + [r for r in rows if r.kind != "rewrite"]
    init: torch.Tensor | None = None
    kl_ref: dict[int, torch.Tensor] = {}  # id(row) -> log p_before over the vocabulary
    with torch.no_grad():
        for chunk in _batches(need, hp.batch_prompts):
            ids, att = _pad(chunk, pad, device)
            # the logits only where a KL row reads them (the head over every position was most of this pass): an
            # essence row's last position, a keep row's from its last prompt token on (padded with the last one)
            at = [list(range(r.start - 1, len(r.ids))) if r.kind != "rewrite" else [max(r.start - 1, 0)]
                  for r in chunk]
            width = max(len(a) for a in at)
            where = torch.tensor([a + a[-1:] * (width - len(a)) for a in at], device=device)  # (B, K)
            with Trace(model, [module_name]) as tr:
                logits = _logits_at(model, ids, att, where)  # (B, K, V)
            h = tr[module_name].output  # (B, T, d)
            if init is None:
                init = torch.zeros(n, h.shape[-1], device=device)
            for b, r in enumerate(chunk):
                if r is rows[base_rows[r.req]]:
                    init[r.req] = h[b, r.subj].float()
                if r.kind != "rewrite":
                    kl_ref[id(r)] = F.log_softmax(logits[b, :len(at[b])].float(), -1)  # (entries, V)
    assert init is not None
    # Per δ row: the mean ‖h‖ of its requests (one subject's prompts differ only in words around the subject).
    size = torch.zeros(G, device=device).index_add(0, group, torch.ones(n, device=device))  # (G,)
    init_norm = torch.zeros(G, device=device).index_add(0, group, init.norm(dim=-1)) / size  # (G,)
    max_norm = hp.clamp_norm_factor * init_norm  # (G,)

    kw = cache_kw(model) if hp.prefix_cache else None
    below = _below(model, module_name) if kw is not None else None

    def plan(live: list[Row]) -> list[_Chunk]:
        if kw is None:
            return [_chunk(c, pad, device, kl_ref, kl_w) for c in _batches(live, hp.batch_prompts)]
        # a step runs each row from its subject token on: similar suffix lengths together, less padding
        return [_chunk(c, pad, device, kl_ref, kl_w, model, kw, below)
                for c in _by_length(live, hp.batch_prompts, lambda r: len(r.ids) - r.subj)]

    delta = torch.zeros(G, init.shape[-1], device=device, requires_grad=True)  # (G, d) one row per subject
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    done = torch.zeros(G, dtype=torch.bool, device=device)
    steps = [0] * n
    step_seconds: list[float] = []
    history: list[torch.Tensor] = []  # (G,) per step: each subject's mean loss (the plateau stop)
    nll_out = [float("nan")] * n
    loss_out = [float("nan")] * n
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        chunks = plan(rows)
        for it in range(hp.v_steps):
            t_step = time.perf_counter()
            opt.zero_grad()
            nll_sum = torch.zeros(n, device=device)
            kl_sum = torch.zeros(n, device=device)  # weighted: kl_factor and keep_factor applied
            miss = torch.zeros(n, device=device)  # rows whose greedy answer is not yet what the stop asks
            for c in chunks:
                def add_delta(_name, hidden, c=c):
                    out = hidden.index_put((c.bix, c.six), delta[group[c.rix]].to(hidden.dtype), accumulate=True)
                    if len(c.xb):  # where the subject is named again
                        out = out.index_put((c.xb, c.xs), delta[group[c.xr]].to(hidden.dtype), accumulate=True)
                    return out

                logits = _chunk_logits(model, c, kw, module_name, add_delta, below)  # (N, V)
                logp = F.log_softmax(logits.float(), -1)  # (N, V)
                B = len(c.rows)
                # One indexing op per chunk (a per-row index would build an (N, V) gradient per row).
                picked = logp.gather(-1, c.tgt[:, None]).squeeze(-1) * c.msk  # (N,)
                count = torch.zeros(B, device=device).index_add(0, c.frow, c.msk).clamp_min(1.0)  # (B,)
                nll_rows = -torch.zeros(B, device=device).index_add(0, c.frow, picked) / count  # (B,) mean per token
                kl_rows = torch.zeros(B, device=device)
                with torch.no_grad():  # (B,) a rewrite row's greedy tokens are its target's, by stop_margin nats
                    top2 = logp.topk(2, dim=-1)  # (N, 2)
                    lead = torch.where(top2.indices[:, 0] == c.tgt, top2.values[:, 0] - top2.values[:, 1], -1.0)
                    bad = ~((lead >= hp.stop_margin) & (lead >= 0)) & (c.msk > 0)  # (N,)
                    ok = (torch.zeros(B, device=device).index_add(0, c.frow, bad.float()) == 0) | ~c.is_rw
                if len(c.eb):
                    cur = logp[c.eix]  # (E, V)
                    kl = (c.eref.exp() * (c.eref - cur)).sum(-1)  # (E,) KL(p_before || p_after)
                    # a keep row costs only what it drifts past keep_margin nats: small moves of the subject's
                    # other answers are free, so the δ is not held to the trained contexts alone
                    kl = torch.where(c.ekeep, (kl - hp.keep_margin).clamp_min(0.0), kl)
                    base_tok = c.eref.argmax(-1, keepdim=True)  # (E, 1)
                    if hp.keep_lead > 0:  # the base answer's lead over the runner-up, held to keep_lead
                        with torch.no_grad():
                            b2 = c.eref.topk(2, dim=-1).values
                            # 0.01 nats below the base lead: at δ = 0 the hinge is then off by a margin, not by
                            # float noise (which told the cached and the whole-row passes apart)
                            need = torch.minimum(b2[:, 0] - b2[:, 1], torch.tensor(hp.keep_lead, device=device)) - 0.01
                        lead_now = cur.gather(-1, base_tok).squeeze(-1) - cur.scatter(-1, base_tok, float("-inf")).amax(-1)
                        short = (need - lead_now).clamp_min(0.0)
                        kl = kl + torch.where(c.ekeep, short, torch.zeros_like(short))
                    kl_rows = kl_rows.index_put((c.eb,), kl * c.ew, accumulate=True)
                    with torch.no_grad():  # a keep row answers with the base model's tokens (keep_tokens of them)
                        same = (cur.argmax(-1) == base_tok.squeeze(-1)) | ~c.ekeep
                        if hp.keep_lead > 0:
                            same &= (lead_now >= need) | ~c.ekeep
                        ok = ok & (torch.zeros(B, device=device).index_add(0, c.eb, (~same).float()) == 0)
                nll_c = torch.zeros(n, device=device).index_add(0, c.rix, torch.where(c.is_rw, nll_rows, 0.0))
                kl_c = torch.zeros(n, device=device).index_add(0, c.rix, torch.where(c.is_rw, 0.0, kl_rows))
                part = nll_c / n_rewrite + kl_c
                part = torch.where(done[group], torch.zeros_like(part), part)  # frozen requests: no gradient
                part.sum().backward()
                nll_sum += nll_c.detach() / n_rewrite
                kl_sum += kl_c.detach()
                miss.index_add_(0, c.rix, (~ok).float())
            wd = hp.v_weight_decay * delta.norm(dim=-1) / init_norm.clamp_min(1e-12) ** 2  # (G,)
            loss = nll_sum + kl_sum + wd.detach()[group]  # (n,)
            live = (~done[group]).tolist()
            nll_l, loss_l = nll_sum.tolist(), loss.tolist()
            for j in range(n):
                if live[j]:
                    steps[j] = it + 1
                    nll_out[j], loss_out[j] = nll_l[j], loss_l[j]
            # a subject's δ stops when greedy decoding says all its targets and keeps its other answers ("argmax"),
            # or when the mean loss of its requests is low enough ("loss")
            if hp.stop == "argmax":
                reached = torch.zeros(G, device=device).index_add(0, group, miss) == 0
                if hp.plateau_steps:  # or when its loss no longer falls: more steps would only cost time
                    mean = torch.zeros(G, device=device).index_add(0, group, loss.detach()) / size  # (G,)
                    history.append(mean)
                    if it >= hp.plateau_steps:
                        then = history[it - hp.plateau_steps]
                        reached |= then - mean < hp.plateau_gain * then
            else:
                reached = torch.zeros(G, device=device).index_add(0, group, loss) / size < hp.early_stop_loss
            newly = (~done) & reached
            done |= newly
            step_seconds.append(time.perf_counter() - t_step)
            if bool(done.all()) or it == hp.v_steps - 1:
                break
            if bool(newly.any()):
                # Finished subjects leave the forward passes: their rows would only cost time (their loss is
                # masked and their δ restored). A batch whose requests stop early then costs what is left.
                frozen = done[group].tolist()
                chunks = [x for x in (_select(c, [not frozen[r.req] for r in c.rows]) for c in chunks) if x is not None]
                chunks = _coalesce(chunks, hp.batch_prompts)
            torch.where(done, torch.zeros_like(wd), wd).sum().backward()
            before = delta.detach().clone()
            opt.step()
            with torch.no_grad():
                norms = delta.norm(dim=-1, keepdim=True)  # (n, 1)
                scale = torch.where(norms > max_norm[:, None], max_norm[:, None] / norms.clamp_min(1e-12), 1.0)
                delta.mul_(scale)
                delta[done] = before[done]
    finally:
        for p, s in zip(model.parameters(), saved):
            p.requires_grad_(s)
        model.train(was_training)
    seconds = time.perf_counter() - t0
    log.info("targets of %d requests in %.2f s (steps %s)", n, seconds, steps)
    return Targets(delta.detach()[group].float(), init.detach().float(), nll_out, loss_out, steps, seconds,
                   step_seconds)
