"""The latent-model VAE: shapes of the round trip, the scaling factor, and the folder checks."""

from __future__ import annotations

import pytest
import torch

from fairdiff.errors import RunDirError
from fairdiff.models.vae import build_vae, decode, encode, latent_shape, load_vae, scaling_factor, vae_folder


def test_round_trip_shapes_and_range():
    torch.manual_seed(0)
    vae = build_vae("tiny", channels=1, latent_channels=4, sample_size=16).eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    z = encode(vae, x, batch_size=2)
    assert z.shape == (3, 4, 8, 8) == (3, *latent_shape(vae, (1, 16, 16)))
    rec = decode(vae, z, batch_size=2)
    assert rec.shape == x.shape and rec.min() >= -1 and rec.max() <= 1
    # "small" halves twice
    assert latent_shape(build_vae("small", 3, 2, 32), (3, 32, 32)) == (2, 8, 8)


def test_scaling_factor_gives_unit_variance(tmp_path):
    torch.manual_seed(0)
    vae = build_vae("tiny", channels=1, latent_channels=4, sample_size=16).eval()
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    raw = encode(vae, x, scaled=False)
    sf = scaling_factor(raw)
    assert sf == pytest.approx(1.0 / float(raw.std()))
    vae.register_to_config(scaling_factor=sf)
    scaled = encode(vae, x)
    assert float(scaled.std()) == pytest.approx(1.0, rel=1e-4)
    # decode undoes the scale: same images from scaled latents as from the raw ones at scale 1
    torch.testing.assert_close(decode(vae, scaled), vae.decode(raw).sample.clamp(-1, 1), atol=1e-4, rtol=1e-4)
    # saved and reloaded with the factor in its config, from a train-vae style folder
    vae.save_pretrained(str(tmp_path / "vae"), safe_serialization=True)
    again = load_vae(tmp_path)
    assert again.config.scaling_factor == pytest.approx(sf)
    assert not any(p.requires_grad for p in again.parameters())
    with pytest.raises(ValueError):
        scaling_factor(torch.zeros(4, 4))


def test_missing_vae_folder_is_a_user_error(tmp_path):
    with pytest.raises(RunDirError, match="no trained VAE"):
        vae_folder(tmp_path)
