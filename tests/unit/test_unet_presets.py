"""U-Net presets: each builds a diffusers U-Net that maps a 16x16 sample to its own shape; ``mid`` is ``tiny``'s
layout at twice the width (the capacity step for CPU bases); the config accepts the known presets only."""

from __future__ import annotations

import pytest
import torch

from fairdiff.errors import ConfigError
from fairdiff.models.unet import UNET_PRESETS, build_unet


@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_preset_maps_a_sample_to_its_shape(preset):
    torch.manual_seed(0)
    unet = build_unet(preset, 16, 1)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 500])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_mid_is_tiny_at_twice_the_width():
    tiny, mid = UNET_PRESETS["tiny"], UNET_PRESETS["mid"]
    assert [2 * c for c in tiny["block_out_channels"]] == list(mid["block_out_channels"])
    for key in ("down_block_types", "up_block_types", "layers_per_block"):
        assert tiny[key] == mid[key]
    count = [sum(p.numel() for p in build_unet(p, 16, 1).parameters()) for p in ("tiny", "mid")]
    assert 3.5 < count[1] / count[0] < 4.5  # convolutions scale with width squared


def test_unknown_preset_is_a_config_error():
    from fairdiff.config import load_config

    with pytest.raises(ConfigError):
        build_unet("huge", 16, 1)
    assert load_config(None, ["model.preset=mid"]).model.preset == "mid"
    with pytest.raises(ConfigError):
        load_config(None, ["model.preset=huge"])
