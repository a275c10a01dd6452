"""Configuration of a sandbox build: model shape, training schedule, and the editability recipe.

Why this shape (see README, "The sandbox model"):

* ROME and MEMIT rewrite the output matrix of an MLP (``c_proj``) at the subject's last token. A small
  model trained plainly does the lookup elsewhere (the last prompt token reads the raw subject tokens
  through layer-0 attention), and then rank-one edits barely move it (../shared/FINDINGS.md). Two parts of
  the training data put the knowledge where ROME reads it:
  - *profile lines* (``<subject>: <all its objects, shuffled>.``) make the subject's last token predict
    every attribute of the subject;
  - a training-only attention mask on a share of sentences (``mask_fraction``): tokens after the subject
    cannot see the subject's earlier tokens, and in the first ``hide_layers`` layers cannot see the subject
    at all. Whatever the model knows about the subject must then pass through the subject's last token,
    after its first ``hide_layers`` MLPs: those MLPs are where facts are stored, and the layers to edit.
* The saved model is an ordinary ``GPT2LMHeadModel``; the mask exists only while training.
* ``hide_layers = 2`` and the edited layer is 1 (``hide_layers - 1``), not 0: a layer-0 key is little more
  than the subject's last token embedding, so subjects that share a last token or look alike share keys,
  and an edit of one leaks into the others. One MLP later the keys are the subject's own.
* ``key_decorrelation`` penalises, while training, the mean squared cosine between different subjects'
  keys at the edited layer. A rank-one edit moves every key in proportion to its C⁻¹-weighted overlap
  with the edited key; without the penalty the raw cosine between subjects' layer-1 keys was 0.58 and 20
  sequential ROME edits kept 38 % of the other subjects' facts; with it, 0.005 and 100 % (30-country
  world, README "The sandbox model").
* ``key_alignment`` penalises (1 - cosine) between one subject's keys in two sentences of a batch, so the
  key does not depend on the words before the subject. Without it, an edit made with "The capital of {}"
  reached "{}'s capital city is" for 60 % of 20 edits; with it, 90 % (and training converged sooner).
* ``key_site``: where the two penalties look, the key itself (every preset) or the MLP's pre-activation.
  Trained long on a large world, a penalty on the key ends up with nearly one-hot keys: GELU outputs are
  almost non-negative, and two non-negative vectors are orthogonal only if their active units are disjoint
  (500 CounterFact subjects: 2 units per key, rank 259 of 499). On the pre-activation the 500-subject
  sandbox kept 170 units per key and full rank, but at 1,000 subjects and 4,320 steps the keys fell back to
  9 units, most of their energy in 86 directions, and MEMIT in batches of 10 reached 0.25 instead of 0.82
  (``bench/results/sandbox_keys_sweep.json``). Not a preset's default until a large build takes edits.
* ``key_bank``: a batch holds about 50 of a large world's subjects, so ``key_decorrelation`` sees a key's
  collisions with the rest of the world only by chance. On 1,000 CounterFact subjects it ends with keys on
  326 shared units (rank 344) at a mean |cos| of 0.005: colliding pairs are 0.5 % of all pairs and cost
  almost nothing. ``key_bank`` keeps every subject's latest key and penalises each key's squared cosine with
  its 8 nearest other subjects. 500 CounterFact subjects, bench schedule: rank 259 -> 480 of 499, fit of
  random targets 52 % -> 96 %, held-out accuracy 0.88 -> 0.90; one MEMIT batch of all 499: efficacy 0.30 ->
  0.77, neighbourhood 0.98 -> 0.91 (``bench/results/sandbox_keys_sweep.json``, row kb1). A weaker
  ``key_decorrelation`` alone goes the other way (0.25: rank 240; 0.1: rank 103). The ``bench`` preset uses
  it (1.0): on 1,000 CounterFact subjects layer 1's keys have rank 715 of 997 and a least-squares update fits
  71 % of random targets (34 % without), and one MEMIT batch of 999 edits reaches efficacy 0.44 (0.17
  without) at neighbourhood 0.90 (0.98). It costs generalization: against a control built without it on the
  same machine, held-out accuracy 0.89 -> 0.82 and paraphrase in MEMIT batches of 10 0.79 -> 0.66 (README,
  "The editing engine"; sweep row cf1000-bf16).
* ``n_embd = 256``, ``n_inner = 1024`` (MLP width = the key space of an edit): at 128/512 the penalty
  cannot separate the keys (C⁻¹ leak 0.12 against 0.05) and 20 edits still collapse the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from editing.strict import check_fields, from_mapping


KEY_SITES = ("key", "preactivation")
PRECISIONS = ("auto", "float32")


@dataclass(frozen=True)
class SandboxConfig:
    # --- model (GPT-2 architecture) ---
    n_layer: int = 4  # transformer blocks; facts are stored in the first `hide_layers`, read later
    n_embd: int = 256  # residual width
    n_head: int = 4
    n_inner: int = 1024  # MLP width = width of the keys ROME/MEMIT edit
    n_positions: int = 128  # context length; training packs sentences into sequences this long
    vocab_size: int = 4096  # upper bound: BPE stops merging earlier on a small corpus
    # --- training ---
    epochs: int = 60  # passes over the training sentences
    min_steps: int = 0  # floor on optimizer steps (small worlds have few steps per epoch)
    batch_size: int = 16  # packed sequences per step
    lr: float = 3e-3  # peak learning rate: linear warm-up, constant, linear decay to lr/10
    warmup: float = 0.05  # share of steps spent warming up
    decay: float = 0.3  # share of steps spent decaying
    weight_decay: float = 0.01
    # --- editability recipe ---
    mask_fraction: float = 0.8  # share of sentences trained with the subject-hiding mask
    hide_layers: int = 2  # first layers where post-subject tokens cannot see the subject at all
    profile_lines: int = 6  # "<subject>: <objects>." lines per subject and epoch, reshuffled each time
    heldout_fraction: float = 0.5  # share of each relation's facts whose last phrasing is held out
    key_decorrelation: float = 1.0  # weight of a penalty on the cosine between different subjects' keys
    key_alignment: float = 1.0  # weight of a penalty on 1 - cosine between one subject's keys in two sentences
    key_site: str = "key"  # where both penalties look: "key" (c_proj's input) or "preactivation" (c_fc's output)
    key_bank: float = 0.0  # weight of a penalty on the cosine between a key and its nearest other subjects' keys, world-wide
    # --- machine ---
    threads: int = 1  # torch threads; results are bit-repeatable for a fixed count only
    precision: str = "auto"  # "auto": bfloat16 autocast where the CPU multiplies it natively; "float32": never
    eval_every: int = 10  # epochs between accuracy checks on the progress bar

    def __post_init__(self) -> None:
        check_fields(self, label="sandbox config ")
        if self.n_layer < 2:
            raise ValueError(f"sandbox config 'n_layer': need at least 2 layers, found {self.n_layer}")
        if self.n_embd % self.n_head:
            raise ValueError(f"sandbox config 'n_head': {self.n_head} does not divide n_embd={self.n_embd}")
        if not 1 <= self.hide_layers < self.n_layer:
            raise ValueError(
                f"sandbox config 'hide_layers': expected 1..{self.n_layer - 1} (later layers must read the facts), "
                f"found {self.hide_layers}"
            )
        for name in ("mask_fraction", "heldout_fraction", "warmup", "decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"sandbox config '{name}': expected a value in [0, 1], found {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"sandbox config 'precision': expected one of {', '.join(PRECISIONS)}, found {self.precision!r}"
            )
        if self.key_site not in KEY_SITES:
            raise ValueError(
                f"sandbox config 'key_site': expected one of {', '.join(KEY_SITES)}, found {self.key_site!r}"
            )
        for name in ("key_decorrelation", "key_alignment", "key_bank"):
            if getattr(self, name) < 0:
                raise ValueError(f"sandbox config '{name}': expected a value >= 0, found {getattr(self, name)}")
        for name in ("epochs", "batch_size", "threads", "n_positions", "vocab_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"sandbox config '{name}': expected a positive value, found {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SandboxConfig":
        return from_mapping(cls, d, label="sandbox config ")


# Presets. `tiny` is for tests (≈ 100–250 facts); `demo` is the newcomer's demo world (51 countries, 405 steps,
# ≈ 3½ min on 2 cores: the demo must run in 10 minutes from a fresh clone; it knows 99.8 % of its training
# probes and 100 % of the held-out ones); `bench` trains longer for better locality on large worlds, and
# keeps a large world's keys apart with `key_bank` (the CounterFact sandbox of the editing benchmarks:
# 1,000 records, 32 min on 2 cores with bfloat16 autocast, about twice that in float32).
PRESETS: dict[str, SandboxConfig] = {
    "tiny": SandboxConfig(epochs=80, min_steps=400, threads=2),
    "demo": SandboxConfig(epochs=45, threads=2),
    "bench": SandboxConfig(epochs=120, min_steps=1000, threads=2, key_bank=1.0),
}


def preset(name: str, **overrides: Any) -> SandboxConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
