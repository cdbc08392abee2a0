"""The DDIM loop of a Stable Diffusion pipeline with classifier-free guidance, opened up for distribution guidance
and for reading h-space.

:func:`sd_generate` walks the same operations as diffusers' ``StableDiffusionPipeline.__call__`` (its own
``encode_prompt``, ``prepare_latents``, scheduler, batched ``[uncond; cond]`` U-Net call, VAE decode and
post-processing), so with no guidance (or scale 0) its images are the pipeline's, bit for bit. Around the U-Net
call it can

* record the conditional branch's h (the middle block's output) at every step, pooled as the heads take it
  (for fitting heads on the model's own generations, :mod:`fairdiff.training.sd_heads`);
* apply :class:`~fairdiff.methods.sd_guidance.SDDistributionGuidance` (an x_t gradient added to the noise
  prediction, or an h edit of the conditional branch).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fairdiff.methods.sd_guidance import SDDistributionGuidance
from fairdiff.models.hspace import capture_h, edit_h
from fairdiff.utils.images import to_uint8

POOLS = ("flatten", "mean")


@dataclass
class Generation:
    """uint8 images ``[N, 3, H, W]``; with recording, pooled h ``[S, N, D]`` of the conditional branch; the
    schedule's timesteps; per step the guidance's loss and predicted shares (empty without guidance)."""

    images: np.ndarray
    feats: torch.Tensor | None
    timesteps: list[int]
    history: list[dict] = field(default_factory=list)
    h_shape: list[int] = field(default_factory=list)


def pool_h(h: torch.Tensor, pool: str) -> torch.Tensor:
    """h ``[B, C, H, W]`` -> ``[B, D]`` float32, as :meth:`GuidanceHeads.features` does."""
    h = h.detach().float()
    return h.flatten(1) if pool == "flatten" else h.mean(dim=(2, 3))


def load_sd_any(sd: str | Path, device: str | None = None):
    """A local diffusers SD folder, or an ``sd-finetune`` run (its base folder with its LoRA applied)."""
    from fairdiff.runs import SD_META
    from fairdiff.sampling.sd import load_sd_folder, load_sd_pipeline

    p = Path(sd)
    if (p / SD_META).is_file():
        return load_sd_pipeline(p, lora=True, device=device)[0]
    return load_sd_folder(p, device=device)


def schedule_of(pipe, steps: int) -> list[int]:
    """The timesteps the pipeline's DDIM scheduler walks in ``steps`` steps."""
    pipe.scheduler.set_timesteps(steps)
    return [int(t) for t in pipe.scheduler.timesteps]


def _generate_batch(pipe, prompt: str, seeds: list[int], *, size: int, steps: int, cfg_scale: float,
                    guidance: SDDistributionGuidance | None, record: str | None):
    dev = pipe._execution_device
    do_cfg = cfg_scale > 1 and pipe.unet.config.time_cond_proj_dim is None  # as the pipeline decides
    b = len(seeds)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt([prompt] * b, dev, 1, do_cfg, None)
    embeds = torch.cat([uncond, cond]) if do_cfg else cond
    nu = b if do_cfg else 0  # rows of the unconditional branch in the U-Net batch
    pipe.scheduler.set_timesteps(steps, device=dev)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.no_grad():
        latents = pipe.prepare_latents(b, pipe.unet.config.in_channels, size, size, embeds.dtype, dev, gens)
    extra = pipe.prepare_extra_step_kwargs(gens, 0.0)
    guided = guidance is not None and guidance.active
    feats: list[torch.Tensor] = []
    h_shape: list[int] = []
    for i, t in enumerate(pipe.scheduler.timesteps):
        x_grad = guided and guidance.mode == "x"
        x = latents.detach().requires_grad_(True) if x_grad else latents
        inp = torch.cat([x] * 2) if do_cfg else x
        inp = pipe.scheduler.scale_model_input(inp, t)
        hook = edit_h(lambda h, _i=i: guidance.edit_h(h, _i, nu), pipe.unet) if guided and guidance.mode == "h" \
            else nullcontext()
        with torch.set_grad_enabled(x_grad), capture_h(pipe.unet) as seen, hook:
            noise = pipe.unet(inp, t, encoder_hidden_states=embeds, timestep_cond=None,
                              cross_attention_kwargs=None, added_cond_kwargs=None,
                              return_dict=False)[0]
            h_cond = seen[-1][nu:]
            if i == 0 and guided:
                guidance.check_h(h_cond)
            grad = None
            if x_grad:
                (grad,) = torch.autograd.grad(guidance.loss_of(h_cond.float(), i), x)
        if record is not None:
            feats.append(pool_h(h_cond, record).cpu())
            h_shape = list(h_cond.shape[1:])
        noise = noise.detach()
        if do_cfg:
            n_u, n_c = noise.chunk(2)
            noise = n_u + cfg_scale * (n_c - n_u)
        if grad is not None:
            noise = noise + guidance.eps_shift(grad.detach(), pipe.scheduler.alphas_cumprod[int(t)].to(dev))
        with torch.no_grad():
            latents = pipe.scheduler.step(noise, t, latents.detach(), **extra, return_dict=False)[0]
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=gens)[0]
        image = pipe.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * b)
    return image.float().cpu() * 2 - 1, (torch.stack(feats) if record else None), h_shape


def sd_generate(pipe, prompt: str, seeds: list[int], *, size: int, steps: int, cfg_scale: float,
                guidance: SDDistributionGuidance | None = None, record: str | None = None,
                batch_size: int = 16) -> Generation:
    """Images of one prompt, image i from a CPU generator seeded ``seeds[i]`` (as the pipeline draws them).

    ``cfg_scale``: classifier-free guidance (above 1 runs the unconditional branch too, as the pipeline does).
    ``guidance``: distribution guidance, taken over each batch of ``batch_size`` images (its share is a batch
    statistic). ``record``: a pool ('flatten' or 'mean') to keep the conditional branch's h at every step."""
    timesteps = schedule_of(pipe, steps)
    if guidance is not None and guidance.active:
        guidance.check_schedule(timesteps)
    imgs, feats, h_shape = [], [], []
    for s in range(0, len(seeds), batch_size):
        im, f, h_shape = _generate_batch(pipe, prompt, seeds[s : s + batch_size], size=size, steps=steps,
                                         cfg_scale=cfg_scale, guidance=guidance, record=record)
        imgs.append(im)
        if f is not None:
            feats.append(f)
    history = list(guidance.history) if guidance is not None else []
    return Generation(to_uint8(torch.cat(imgs)), torch.cat(feats, dim=1) if feats else None, timesteps, history,
                      h_shape)


GUIDED_KIND = "sd-guided"  # the marker kind of a guided-sampling output folder
PROMPT_MAP = "prompts.json"  # {"subfolder": "prompt text"}, as ``fairdiff audit --images`` reads it


def step_shares(history: list[dict]) -> list[list[float]]:
    """The heads' predicted batch share at each guided step (before that step's guidance), averaged over the
    batches of a prompt: how the steered share evolved along the trajectory."""
    by_step: dict[int, list[list[float]]] = {}
    for h in history:
        by_step.setdefault(h["step"], []).append(h["shares"])
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
        g = SDDistributionGuidance(heads, target, scale, mode=mode, temperature=temperature, loss=loss)
        gen = sd_generate(pipe, prompt, seeds, size=size, steps=steps, cfg_scale=cfg_scale, guidance=g,
                          batch_size=batch_size)
        meta = {"prompt": prompt, "n": n, "seed": seed, "seeds": seeds, "steps": steps, "guidance_scale": cfg_scale,
                "size": size, "scheduler": "ddim", "distribution_guidance": {**g.describe(), **(info or {})},
                "predicted_shares": step_shares(gen.history)}
        write_samples(out / sub, gen.images, seeds, None, meta)
        log(f"[{j}/{len(items)}] {prompt}: {n} images (target {target}, scale {scale}, mode {mode})")
    return out
