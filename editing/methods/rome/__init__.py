"""ROME (Meng et al. 2022): one rank-one update of one MLP output matrix per request.

Its hyperparameters and table row; the computation is :mod:`editing.methods.rome.solve` (loaded when an edit
runs, so that reading the table imports no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import HparamsError, Method, StatsHparams, TargetHparams, check_fields


@dataclass(frozen=True)
class RomeHparams:
    """ROME (Meng et al. 2022): one rank-one update of one MLP output matrix per request."""

    layer: int
    target: TargetHparams = field(default_factory=TargetHparams)
    stats: StatsHparams = field(default_factory=StatsHparams)
    mom2_adjustment: bool = True  # use C⁻¹ (the paper); off = a plain least-change update along k
    ridge: float = 1e-4  # C + ridge · tr(C)/d · I, so a narrow corpus cannot make C singular

    method = "rome"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.layer < 0:
            raise HparamsError(f"'layer': expected a layer index >= 0, found {self.layer}")


METHOD = Method(
    name="rome", summary="one request after another, one layer", hparams=RomeHparams,
    solver="editing.methods.rome.solve", layers=lambda hp: [hp.layer], layers_key="layer",
    needs_stats=lambda hp: hp.mom2_adjustment,  # without C⁻¹ the update is a plain least-change one along k
    distinct_keys=False, progress=lambda n: ("ROME requests, one after another", n), events=("request",))
