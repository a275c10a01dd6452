"""MEMIT (Meng et al. 2023): a batch of requests spread over several consecutive MLP layers.

Its hyperparameters and table row; the computation is :mod:`editing.methods.memit.solve` (loaded when an edit
runs, so that reading the table imports no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import HparamsError, Method, StatsHparams, TargetHparams, check_fields


@dataclass(frozen=True)
class MemitHparams:
    """MEMIT (Meng et al. 2023): a batch of requests spread over several consecutive MLP layers."""

    layers: tuple[int, ...]
    target: TargetHparams = field(default_factory=TargetHparams)
    stats: StatsHparams = field(default_factory=StatsHparams)
    mom2_update_weight: float = 15000.0  # λ in (λ C + K Kᵀ); does not transfer across widths
    ridge: float = 1e-4  # C + ridge · tr(C)/d · I: bounds C⁻¹ where the corpus barely reaches a key
    batched_targets: bool = True  # optimise all target vectors of a batch together
    # A request whose update realises less than this share of its target residual (see memit.MemitTimes.realized)
    # gets its target raised and the layers solved again, up to realize_rounds times (0: solve once)
    min_realized: float = 0.95
    realize_rounds: int = 0
    # ... by at most this factor in all rounds together: a request far short of its target shares its key
    # directions with the rest of the batch, and raising it without bound grows the update on every key that
    # shares them (unbounded, 8x in 3 rounds, one batch of 999 CounterFact edits collapsed the sandbox)
    max_target_gain: float = 2.0
    # A request is short too when, with the layers solved, its new target is said on its own prompt but leads the
    # runner-up by less than this many nats (editing.targets.target_leads; 0: not checked): said by a hair, the
    # first later edit that moves it a little takes it back. Its target is raised by half. One not said at all is
    # not raised for its lead (on a crowded sandbox that wrecked what its keys share).
    min_lead: float = 0.0
    # A batch still short of min_realized after those rounds is split in two halves edited one after the other
    # (the second on the first's update), each split again down to split_depth levels (0: never split)
    split_depth: int = 0

    method = "memit"

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.layers or list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 0:
            raise HparamsError(f"'layers': expected increasing layer indices >= 0, found {list(self.layers)}")
        if self.split_depth < 0 or self.realize_rounds < 0:
            raise HparamsError(f"'split_depth' and 'realize_rounds': expected >= 0, found {self.split_depth} and "
                               f"{self.realize_rounds}")
        if self.min_lead < 0:
            raise HparamsError(f"'min_lead': expected nats >= 0, found {self.min_lead}")
        if self.max_target_gain < 1.0:
            raise HparamsError(f"'max_target_gain': expected >= 1, found {self.max_target_gain}")

    @property
    def z_layer(self) -> int:
        """Layer at whose output the target vectors z are optimised (the last edited one)."""
        return self.layers[-1]


METHOD = Method(
    name="memit", summary="one batch over several layers", hparams=MemitHparams,
    solver="editing.methods.memit.solve", layers=lambda hp: list(hp.layers), layers_key="layers",
    needs_stats=lambda hp: True, distinct_keys=True,
    progress=lambda n: (f"MEMIT target vectors, {n} request(s) together", None), events=("solve",))
