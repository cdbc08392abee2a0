"""Stable-Diffusion sampling on the one denoising loop: prompts, classifier-free guidance, distribution guidance
and h-space recording.

:func:`sd_generate` encodes the prompt with the pipeline's own ``encode_prompt``, wraps the pipeline's U-Net as a
:class:`~fairdiff.sampling.denoisers.TextDenoiser` (inside a :class:`~fairdiff.sampling.denoisers.CFGDenoiser`
when classifier-free guidance is on, as the pipeline decides), and hands it to :func:`fairdiff.sampling.sample`
with the pipeline's scheduler; the latents are decoded by the pipeline's VAE and post-processing. With no
guidance (or scale 0) its images are the diffusers pipeline's, bit for bit (tested). Around the denoiser call it
can

* record the conditional branch's h (the middle block's output) at every step, pooled as the heads take it
  (:class:`~fairdiff.sampling.denoisers.RecordH`; for fitting heads on the model's own generations,
  :mod:`fairdiff.training.sd_heads`);
* apply :class:`~fairdiff.methods.guidance.DistributionGuidance` (an x_t gradient added to the noise
  prediction, or an h edit of the conditional branch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fairdiff.methods.guidance import DistributionGuidance
from fairdiff.sampling.denoisers import POOLS, CFGDenoiser, RecordH, TextDenoiser  # noqa: F401
from fairdiff.sampling.sampler import sample
from fairdiff.utils.images import to_uint8


@dataclass
class Generation:
    """uint8 images ``[N, 3, H, W]``; with recording, pooled h ``[S, N, D]`` of the conditional branch; the
    schedule's timesteps; per step the guidance's loss and predicted shares (empty without guidance)."""

    images: np.ndarray
    feats: torch.Tensor | None
    timesteps: list[int]
    history: list[dict] = field(default_factory=list)
    h_shape: list[int] = field(default_factory=list)


def schedule_of(pipe, steps: int) -> list[int]:
    """The timesteps the pipeline's DDIM scheduler walks in ``steps`` steps (as the heads record them)."""
    from fairdiff.models.heads import schedule_timesteps

    return schedule_timesteps("ddim", pipe.scheduler.config, steps)


def sd_guidance(pipe, heads, target, scale: float, **kw) -> DistributionGuidance:
    """Distribution guidance for this pipeline's U-Net: guides the first step too, mode ``x`` by default (the
    scheduler's noise levels given), temperature 1 unless said."""
    kw.setdefault("mode", "x")
    kw.setdefault("temperature", 1.0)
    return DistributionGuidance(heads, target, scale, alphas_cumprod=pipe.scheduler.alphas_cumprod,
                                guide_first_step=True, unet=pipe.unet, **kw)


def prompt_denoiser(pipe, prompt: str, n: int, cfg_scale: float):
    """``(denoiser, cond)`` for ``n`` images of one prompt: the pipeline's U-Net with the prompt's embeddings per
    image, inside classifier-free guidance when ``cfg_scale > 1`` (as the pipeline decides)."""
    dev = pipe._execution_device
    do_cfg = cfg_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt([prompt], dev, 1, do_cfg, None)
    den = TextDenoiser(pipe.unet)
    kw = {"encoder_hidden_states": cond.expand(n, *cond.shape[1:])}
    if not do_cfg:
        return den, kw
    return CFGDenoiser(den, cfg_scale), {"cond": kw, "uncond": {"encoder_hidden_states":
                                                                  uncond.expand(n, *uncond.shape[1:])}}


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, seeds: list[int], batch_size: int = 16) -> torch.Tensor:
    """The pipeline's VAE decode and post-processing of ``latents``; images in [-1, 1] on the CPU."""
    dev = pipe._execution_device
    out = []
    for s in range(0, len(latents), batch_size):
        z = latents[s : s + batch_size].to(dev, pipe.vae.dtype)
        gens = [torch.Generator("cpu").manual_seed(v) for v in seeds[s : s + batch_size]]
        image = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False, generator=gens)[0]
        image = pipe.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(z))
        out.append(image.float().cpu() * 2 - 1)
    return torch.cat(out)


def sd_generate(pipe, prompt: str, seeds: list[int], *, size: int, steps: int, cfg_scale: float,
                guidance: DistributionGuidance | None = None, record: str | None = None,
                batch_size: int = 16, progress: bool = False) -> Generation:
    """Images of one prompt, image i from a CPU generator seeded ``seeds[i]`` (as the pipeline draws them).

    ``cfg_scale``: classifier-free guidance (above 1 runs the unconditional branch too, as the pipeline does).
    ``guidance``: distribution guidance (:func:`sd_guidance`), taken over each batch of ``batch_size`` images
    (its share is a batch statistic). ``record``: a pool ('flatten' or 'mean') to keep the conditional branch's h
    at every step."""
    seeds = [int(s) for s in seeds]
    timesteps = schedule_of(pipe, steps)
    g = guidance if guidance is not None and guidance.active else None
    if g is not None:
        g.check_schedule(timesteps)
    rec = RecordH(record, inner=g, unet=pipe.unet) if record is not None else None
    den, cond = prompt_denoiser(pipe, prompt, len(seeds), cfg_scale)
    f = int(pipe.vae_scale_factor)
    latents = sample(den, pipe.scheduler, seeds, batch_size=batch_size, num_steps=steps, cond=cond,
                     shape=(pipe.unet.config.in_channels, size // f, size // f), guidance=rec or g, eta=0.0,
                     device=pipe._execution_device, dtype=cond_dtype(cond), progress=progress, clip_output=False)
    images = decode_latents(pipe, latents, seeds, batch_size)
    history = list(guidance.history) if guidance is not None else []
    return Generation(to_uint8(images), rec.feats() if rec is not None else None, timesteps, history,
                      rec.h_shape if rec is not None else [])


def cond_dtype(cond: dict) -> torch.dtype:
    """The dtype of the (first) conditioning tensor: the latents start in it, as the pipeline's do."""
    v = next(iter(cond.values()))
    return cond_dtype(v) if isinstance(v, dict) else v.dtype


GUIDED_KIND = "sd-guided"  # the marker kind of a guided-sampling output folder
PROMPT_MAP = "prompts.json"  # {"subfolder": "prompt text"}, as ``fairdiff audit --images`` reads it


def step_shares(history: list[dict]) -> list[list[float]]:
    """The heads' predicted batch share at each guided step (before that step's guidance), averaged over the
    batches of a prompt: how the steered share evolved along the trajectory."""
    by_step: dict[int, list[list[float]]] = {}
    for h in history:
        shares = h["shares"]
        by_step.setdefault(h["step"], []).append(next(iter(shares.values())) if isinstance(shares, dict) else shares)
    return [np.mean(v, axis=0).round(4).tolist() for _, v in sorted(by_step.items())]


def guide_sd(pipe, heads, items: list[tuple[str, list[float], str]], out: str | Path, *, n: int, scale: float,
             mode: str = "x", temperature: float = 1.0, loss: str = "chi2", steps: int, cfg_scale: float,
             size: int, seed: int = 0, batch_size: int = 16, info: dict | None = None,
             log=lambda _m: None) -> Path:
    """Guided samples of each ``(prompt, target shares, subfolder)`` in ``items`` into ``out/subfolder`` (a
    samples folder: ``samples.npz``, PNGs, ``meta.json`` with the guidance and its per-step predicted shares),
    plus ``out/prompts.json``, so ``fairdiff audit --images out`` judges them. Image i of every prompt uses seed
    + i; the share is steered over each batch of ``batch_size`` images."""
    from fairdiff.runs import write_samples
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import write_marker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, GUIDED_KIND)
    write_json(out / PROMPT_MAP, {sub: prompt for prompt, _, sub in items})
    seeds = list(range(seed, seed + n))
    for j, (prompt, target, sub) in enumerate(items, 1):
        g = sd_guidance(pipe, heads, target, scale, mode=mode, temperature=temperature, loss=loss)
        gen = sd_generate(pipe, prompt, seeds, size=size, steps=steps, cfg_scale=cfg_scale, guidance=g,
                          batch_size=batch_size)
        meta = {"prompt": prompt, "n": n, "seed": seed, "seeds": seeds, "steps": steps, "guidance_scale": cfg_scale,
                "size": size, "scheduler": "ddim", "distribution_guidance": {**g.describe(), **(info or {})},
                "predicted_shares": step_shares(gen.history)}
        write_samples(out / sub, gen.images, seeds, None, meta)
        log(f"[{j}/{len(items)}] {prompt}: {n} images (target {target}, scale {scale}, mode {mode})")
    return out
