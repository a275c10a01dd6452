"""The gate's thresholds: a frozen dataclass, loaded strictly from YAML (unknown keys and wrong types are errors
that name the key).

    policy = load_policy(path)            # or GatePolicy() for the defaults
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from editing.strict import check_fields, from_mapping, read_yaml


class PolicyError(ValueError):
    """A gate policy file is wrong (the message names the key)."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate and the size of its probe suites (YAML keys = field names)."""

    min_reliability: float = 0.95  # share of requests whose greedy answer says target_new
    min_generalization: float = 0.8  # share of paraphrase probes whose greedy answer says target_new
    min_subject_locality: float = 0.9  # share of the edited subjects' other facts whose greedy answer is unchanged
    # of those, the facts with a known answer (a sandbox's facts.jsonl, a request's attribute_prompts): none may move.
    # The share above also counts the catalogue's unknown-answer continuations, compared token for token
    min_subject_facts: float = 1.0
    min_locality: float = 0.95  # share of neighbour, broad and protected probes whose greedy answer is unchanged
    # share of the namesakes' facts (subjects whose name shares a word with an edited one: North Korea for South
    # Korea) whose greedy answer is unchanged: their keys lie closest to the edited one's, a random sample of
    # neighbours rarely holds one, and an edit of one subject of such a pair commonly changes the other
    min_namesake_locality: float = 0.9
    min_protected: float = 1.0  # share of protected facts whose greedy answer is unchanged
    # share of earlier edits (applied by earlier versions, said by the parent) whose greedy answer still says
    # their new target: a schedule of edits must not undo the ones before it
    min_retention: float = 1.0
    max_kl: float = 0.5  # mean KL(base || edited), nats, of the next token on neighbour, broad and protected prompts
    max_entropy_drop: float = 0.1  # relative drop of the n-gram entropy of greedy generations
    max_perplexity_ratio: float = 1.25  # perplexity on the fixed text sample, edited / base
    # ‖W_edited‖ / ‖W_base‖ of each edited matrix: an early warning, since growing norms precede the collapse of
    # sequentially edited models (Gupta et al. 2024); MEMIT's 3 edits on the tiny sandbox grow c_proj 1.9x
    max_norm_growth: float = 3.0
    paraphrases: int = 3  # catalogue paraphrases per request (when it brings none)
    neighbours: int = 5  # sampled neighbours per request (when it brings none), base-correct only
    namesakes: int = 5  # namesakes' facts per request (whatever neighbours it brings), base-correct only
    subject_probes: int = 64  # probes of each edited subject's other facts, each fact in its phrasings in turn (0: all)
    retention_sample: int = 200  # earlier edits checked (a seeded sample of those in effect; 0: none)
    locality_sample: int = 200  # broad-locality probes: a seeded sample of the probe bank the base model answers
    answer_tokens: int = 3  # greedy tokens compared on a probe whose answer is not known (the base model's stands)
    probe_confidence: float = 0.5  # such a probe counts only where the base model's first token is this likely
    generation_tokens: int = 24  # greedy tokens per fluency generation
    seed: int = 0  # neighbour, subject-probe and probe-bank sampling
    # each request must also meet min_reliability (be said), min_generalization, min_subject_locality,
    # min_subject_facts and min_namesake_locality on its own probes, not only the batch's share: one that does not
    # is named, and the pipeline edits the batch again without it
    per_request: bool = True

    def __post_init__(self) -> None:
        check_fields(self, error=PolicyError)
        for name in ("min_reliability", "min_generalization", "min_subject_locality", "min_subject_facts", "min_locality",
                     "min_namesake_locality", "min_protected", "min_retention", "probe_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PolicyError(f"'{name}': expected a share in [0, 1], found {getattr(self, name)}")
        for name in ("max_kl", "max_entropy_drop", "max_perplexity_ratio", "max_norm_growth"):
            if getattr(self, name) < 0:
                raise PolicyError(f"'{name}': expected a value >= 0, found {getattr(self, name)}")
        for name in ("paraphrases", "neighbours", "namesakes", "subject_probes", "retention_sample", "locality_sample",
                     "answer_tokens", "generation_tokens"):
            if getattr(self, name) < 0:
                raise PolicyError(f"'{name}': expected a count >= 0, found {getattr(self, name)}")

    def thresholds(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k.startswith(("min_", "max_"))}


def load_policy(path: str | Path | None) -> GatePolicy:
    """The policy in a YAML file (unknown keys and wrong types are errors naming the key); None: defaults."""
    if path is None:
        return GatePolicy()
    p = Path(path)
    data = read_yaml(p, PolicyError, "the gate policy") or {}
    try:
        return from_mapping(GatePolicy, data, error=PolicyError)
    except PolicyError as e:
        raise PolicyError(f"{p}: {e}") from None
