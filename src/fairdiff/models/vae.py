"""Small diffusers ``AutoencoderKL`` presets for latent diffusion trained from scratch.

A latent model denoises ``z = scaling_factor * E(x)`` instead of pixels. The scaling factor (1 / std of the
training latents, as Stable Diffusion does) is stored in the VAE's own config, so whoever loads the VAE folder
encodes and decodes with the same scale. Nothing here knows about fairness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fairdiff.errors import ConfigError, RunDirError

# each level but the last halves the resolution: "tiny" 2x, "small" 4x
VAE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8},
    "small": {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "norm_num_groups": 16},
}


def build_vae(preset: str, channels: int, latent_channels: int = 4, sample_size: int = 32):
    """A freshly initialised ``AutoencoderKL`` from a preset (images with ``channels`` channels)."""
    from diffusers import AutoencoderKL

    if preset not in VAE_PRESETS:
        raise ConfigError(f"unknown VAE preset '{preset}' (known: {', '.join(VAE_PRESETS)})")
    if latent_channels < 1:
        raise ConfigError(f"model.vae_latent_channels: must be at least 1, got {latent_channels}")
    p = VAE_PRESETS[preset]
    levels = len(p["block_out_channels"])
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=latent_channels,
        sample_size=sample_size,
        scaling_factor=1.0,
        **p,
    )


def downsample_factor(vae) -> int:
    """How many pixels one latent cell covers along each side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The latent shape ``(C_z, H/f, W/f)`` of images of ``image_shape``."""
    f = downsample_factor(vae)
    _, h, w = image_shape
    return (vae.config.latent_channels, h // f, w // f)


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 256, scaled: bool = True) -> torch.Tensor:
    """Posterior means of ``images`` in [-1, 1] (times the scaling factor when ``scaled``), on the CPU.

    The mean (not a sample) is used so that the training set's latents are a fixed, reproducible tensor.
    """
    dev = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    sf = float(vae.config.scaling_factor) if scaled else 1.0
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev, dtype)
        out.append(vae.encode(x).latent_dist.mean.float().cpu() * sf)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (float, on the CPU)."""
    dev = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    sf = float(vae.config.scaling_factor)
    out = []
    for i in range(0, len(latents), batch_size):
        z = latents[i : i + batch_size].to(dev, dtype) / sf
        out.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of unscaled latents, so that scaled latents have unit variance (the noise's variance)."""
    std = float(latents.float().std())
    if not std > 0:
        raise ValueError("latents have zero variance; the VAE did not learn anything")
    return 1.0 / std


def vae_folder(path: str | Path) -> Path:
    """Accept a ``train-vae`` output folder (uses ``vae/``), a model folder with ``vae/``, or the VAE folder."""
    from fairdiff.models.weights import PICKLE_SUFFIXES

    p = Path(path)
    for cand in (p / "vae", p / "model" / "vae", p):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    for cand in (p / "vae", p / "model" / "vae", p):
        if (cand / "config.json").is_file() and cand.is_dir():
            pickles = sorted(f.name for f in cand.iterdir() if f.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise RunDirError(f"model.vae: {cand} holds only pickled weights ({pickles[0]}), which fairdiff never "
                                  f"loads; VAE weights must be safetensors")
    raise RunDirError(f"model.vae: {p} holds no trained VAE (expected {p}/vae/config.json; run 'fairdiff train --vae')")


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """Load a frozen, eval-mode ``AutoencoderKL`` from a VAE, model or ``train-vae`` folder."""
    from diffusers import AutoencoderKL

    from fairdiff.models.weights import check_weights_folder, first_line, loader_errors, quiet_loading

    folder = vae_folder(path)
    check_weights_folder(folder, "model.vae", ("diffusion_pytorch_model.safetensors",))  # header and size
    quiet_loading()
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True).to(device)  # never pickle
    except loader_errors() as e:
        raise RunDirError(f"model.vae: cannot load the VAE in {folder} (damaged or not a VAE?): {first_line(e)}") \
            from None
    vae.requires_grad_(False)
    return vae.eval()
