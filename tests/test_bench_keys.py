"""bench.sandbox_keys.describe: the key-space figures that bound how many facts one layer takes per batch."""

import pytest
import torch

from bench.sandbox_keys import describe

pytestmark = pytest.mark.unit


def test_independent_one_hot_keys_fill_the_space():
    K = torch.eye(8, 16)  # 8 subjects, each with a unit of its own
    d = describe(K)
    assert (d["keys"], d["d_k"], d["rank"], d["units_used"]) == (8, 16, 8, 8)
    assert d["active_units"] == 1.0
    assert d["mean_abs_cos"] == 0.0
    assert d["fit_random"] == pytest.approx(1.0, abs=1e-6)


def test_subjects_sharing_a_unit_cannot_all_be_edited():
    # 8 subjects on 4 units, two per unit (what a collapsed, over-sparse code does): rank 4, half the targets fit
    K = torch.zeros(8, 16)
    for i in range(8):
        K[i, i // 2] = 1.0 + 0.1 * (i % 2)
    d = describe(K)
    assert d["rank"] == 4 and d["units_used"] == 4
    assert 0.3 < d["fit_random"] < 0.7
    assert d["mean_abs_cos"] == pytest.approx(1 / 7, abs=1e-3)  # each key is parallel to 1 of the 7 others


def test_a_benchmark_sandbox_is_the_bench_preset_with_typed_overrides(capsys):
    from bench._common import preset_overrides
    from sandbox import preset

    o = preset_overrides(["n_inner=4096", "key_bank=0.5", "key_site=preactivation"])
    assert o == {"n_inner": 4096, "key_bank": 0.5, "key_site": "preactivation"}
    assert preset("bench", **o).n_inner == 4096 and preset("bench").n_inner == 1024
    for bad, says in (("n_iner=3", "'n_iner=3': expected KEY=VALUE"), ("n_inner=wide", "n_inner takes a int"),
                      ("n_inner", "expected KEY=VALUE")):
        with pytest.raises(SystemExit) as e:
            preset_overrides([bad])
        assert e.value.code == 2 and says in capsys.readouterr().err
