"""Fitting the VAE of a latent model (``fairdiff train --vae``).

This is a model-fitting utility, not a diffusion method, so it has its own short loop: reconstruction MSE plus
a small KL term, AdamW, ``train.steps`` optimizer steps of ``train.batch_size`` images. Afterwards the latent
scaling factor (1 / std of the training latents) is written into the VAE's config, reconstruction quality on the
balanced held-out images is logged (MSE and PSNR), and the VAE is saved with ``save_pretrained`` (safetensors).

Output folder: ``config.yaml``, ``stats.jsonl``, ``vae/`` (diffusers ``AutoencoderKL``), ``metrics.json``,
``recon.png`` (held-out images above, their reconstructions below).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fairdiff.config import RunConfig, save_config
from fairdiff.errors import RunDirError
from fairdiff.models.vae import build_vae, decode, encode, scaling_factor
from fairdiff.utils.io import append_jsonl, write_json
from fairdiff.utils.outputs import check_output_dir, replace_output_dir
from fairdiff.utils.atomic import atomic_dir
from fairdiff.utils.seed import derive_seed, make_generator, seed_everything


@dataclass
class VAEResult:
    out_dir: Path
    steps: int
    recon_mse: float
    psnr: float
    scaling_factor: float
    seconds: float


def psnr(mse: float, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (range 2)."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


@torch.no_grad()
def reconstruction_error(vae, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared error of decode(encode(x)) against x (posterior means, no sampling)."""
    if len(images) == 0:
        return float("nan")
    z = encode(vae, images, batch_size)
    rec = decode(vae, z, batch_size)
    return float((rec - images.float()).pow(2).mean())


def train_vae(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    device: str | None = None,
    data=None,
) -> VAEResult:
    """Fit an ``AutoencoderKL`` (preset ``model.vae_preset``) on the training split of ``cfg.data``."""
    from fairdiff.data import prepare_data
    from fairdiff.utils.images import save_grid, to_uint8
    from fairdiff.training.batches import batch_indices

    out_dir = Path(out_dir)
    # a new or empty folder, or (with --overwrite) a VAE folder that fairdiff wrote; never the cwd or an input
    inputs, legacy = [p for p in (cfg.data.path,) if p], {"vae": ["config.yaml", "vae"]}
    check_output_dir(out_dir, "vae", overwrite=overwrite, inputs=inputs, legacy_files=legacy)
    replace_output_dir(out_dir, "vae", inputs=inputs, legacy_files=legacy)
    tc, mc = cfg.train, cfg.model
    seed_everything(derive_seed(tc.seed, "vae-init"))
    data = data or prepare_data(cfg.data)
    images = data.train_images
    c, h, w = images.shape[1:]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = build_vae(mc.vae_preset, c, mc.vae_latent_channels, h).to(dev)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    if h % f or w % f:
        raise RunDirError(f"data.resolution {h} is not divisible by the VAE's downsampling factor {f}")
    save_config(cfg, out_dir / "config.yaml")
    opt = torch.optim.AdamW(vae.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                            weight_decay=tc.weight_decay)
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, desc="train vae", unit="step")
    t0 = time.time()
    window: dict[str, list[float]] = {}
    vae.train()
    for step in range(tc.steps):
        idx = torch.from_numpy(batch_indices(len(images), tc.batch_size, step, tc.seed))
        x = images[idx].to(dev)
        post = vae.encode(x).latent_dist
        gen = make_generator(tc.seed, "vae", step, device="cpu")
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(dev)
        rec = vae.decode(z).sample
        l_rec = (rec.float() - x.float()).pow(2).mean()
        l_kl = post.kl().mean() / math.prod(x.shape[1:])  # per pixel, comparable to the MSE
        loss = l_rec + mc.vae_kl_weight * l_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(vae.parameters(), tc.max_grad_norm)
        elif tc.clip_mode == "value":
            torch.nn.utils.clip_grad_value_(vae.parameters(), tc.max_grad_norm)
        opt.step()
        for k, v in (("loss", loss), ("recon_mse", l_rec), ("kl", l_kl)):
            window.setdefault(k, []).append(float(v.detach()))
        done = step + 1
        if bar is not None:
            bar.update(1)
        if done % tc.log_every == 0 or done == tc.steps:
            row = {k: float(np.mean(v)) for k, v in window.items()}
            row.update(step=done, elapsed_s=round(time.time() - t0, 3))
            window = {}
            append_jsonl(out_dir / "stats.jsonl", [row])
            if bar is not None:
                bar.set_postfix(mse=f"{row['recon_mse']:.4f}")
    if bar is not None:
        bar.close()

    # ---- scaling factor, held-out reconstruction quality, save
    vae.eval()
    sf = scaling_factor(encode(vae, images, scaled=False))
    vae.register_to_config(scaling_factor=sf)
    held = data.heldout_images
    mse = reconstruction_error(vae, held)
    train_mse = reconstruction_error(vae, images[:256])
    metrics = {"heldout_recon_mse": mse, "heldout_psnr_db": psnr(mse), "train_recon_mse": train_mse,
               "scaling_factor": sf, "latent_shape": [vae.config.latent_channels, h // f, w // f],
               "downsample_factor": f, "steps": tc.steps, "seconds": round(time.time() - t0, 3)}
    with atomic_dir(out_dir / "vae") as tmp:
        vae.to("cpu").save_pretrained(str(tmp), safe_serialization=True)
    write_json(out_dir / "metrics.json", metrics)
    if len(held):
        show = held[:8]
        rec = decode(vae, encode(vae, show))
        save_grid(to_uint8(torch.cat([show, rec])), out_dir / "recon.png", nrow=len(show))
    return VAEResult(out_dir, tc.steps, mse, psnr(mse), sf, time.time() - t0)
