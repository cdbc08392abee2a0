"""Latent diffusion in the one trainer: what changes when ``model.vae`` names a trained VAE.

The training images are encoded once through the frozen VAE (posterior mean x scaling factor); the trainer then
treats those latents exactly as it treats pixels, so every method (baseline, DDM, reweighting) works unchanged and
DDM's indicator reads the latent eps_hat, as in the original work. The VAE is saved into ``model/vae/`` so that
sampling decodes through it.
"""

from __future__ import annotations

import torch

from fairdiff.models.vae import encode, load_vae


def encode_dataset(vae_path: str, images: torch.Tensor, device: str | torch.device = "cpu",
                   batch_size: int = 256) -> tuple[torch.nn.Module, torch.Tensor]:
    """Load the frozen VAE at ``vae_path`` and return ``(vae on the CPU, scaled latents of images on the CPU)``."""
    from fairdiff.errors import ConfigError

    vae = load_vae(vae_path, device)
    if vae.config.in_channels != images.shape[1]:
        raise ConfigError(f"model.vae: the VAE takes {vae.config.in_channels}-channel images but the data has "
                          f"{images.shape[1]} channels (set data.channels)")
    latents = encode(vae, images, batch_size)
    return vae.to("cpu"), latents
