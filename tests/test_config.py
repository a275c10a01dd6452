"""Sandbox configuration: presets, and errors that name the key."""

from __future__ import annotations

import pytest

from sandbox import PRESETS, SandboxConfig, preset

pytestmark = pytest.mark.unit


def test_presets_are_valid_and_editable_by_design():
    for name, cfg in PRESETS.items():
        assert cfg.n_layer >= 4, name  # ROME/MEMIT need a layer that stores and layers that read
        assert 1 <= cfg.hide_layers < cfg.n_layer
        assert SandboxConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("tiny", epochs=2).epochs == 2 and preset("tiny").epochs != 2


@pytest.mark.parametrize(
    "change, key",
    [
        ({"n_layer": "4"}, "n_layer"),
        ({"lr": "fast"}, "lr"),
        ({"profile_lines": True}, "profile_lines"),
        ({"n_head": 3}, "n_head"),
        ({"hide_layers": 4}, "hide_layers"),
        ({"mask_fraction": 1.5}, "mask_fraction"),
        ({"epochs": 0}, "epochs"),
        ({"key_site": "c_proj"}, "key_site"),
        ({"key_site": 1}, "key_site"),
        ({"key_bank": -1.0}, "key_bank"),
        ({"precision": "bf16"}, "precision"),
    ],
)
def test_bad_values_name_the_key(change, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        SandboxConfig(**change)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="'n_layers'"):
        SandboxConfig.from_dict({"n_layers": 4})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
