"""diffusers ``UNet2DModel`` presets and schedulers.

``tiny`` is for tests and CPU runs, ``mid`` (tiny's layout at twice the width) the larger CPU base; ``small``
(about 6.5 M parameters at 32x32: widths 64/128/128, attention at the middle level, 2 layers per block) and
``base`` are for GPU runs.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from fairdiff.errors import ConfigError

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
    "mid": dict(  # tiny's layout at twice the width (about 4.2 M parameters): the capacity step for 16x16 CPU bases
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
    "base": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
}


def build_unet(preset: str, sample_size: int, channels: int, num_class_embeds: int | None = None) -> UNet2DModel:
    """A freshly initialised U-Net from a preset; ``num_class_embeds`` turns on class conditioning."""
    if preset not in UNET_PRESETS:
        raise ConfigError(f"unknown model preset '{preset}' (known: {', '.join(UNET_PRESETS)})")
    p = UNET_PRESETS[preset]
    levels = len(p["block_out_channels"])
    if sample_size % (2 ** (levels - 1)):
        raise ConfigError(f"model preset '{preset}' needs a resolution divisible by {2 ** (levels - 1)}")
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        num_class_embeds=num_class_embeds,
        attention_head_dim=8,
        **p,
    )


def build_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                          clip_sample: bool = True) -> DDPMScheduler:
    """The training-time forward process (DDPM, epsilon prediction); ``clip_sample=False`` for latents."""
    kw: dict[str, Any] = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    if beta_schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    return DDPMScheduler(prediction_type="epsilon", clip_sample=clip_sample, **kw)


SAMPLING_SCHEDULERS = ("ddim", "ddpm", "dpmpp", "unipc")


def build_sampling_scheduler(kind: str, train_scheduler_config: dict):
    """A sampler that shares the training schedule's betas.

    ``ddim`` (eta selects DDIM/DDPM-like noise), ``ddpm`` (ancestral), ``dpmpp`` (DPM-Solver++ 2nd-order multistep)
    and ``unipc`` (UniPC multistep): the last two reach DDIM's quality in fewer steps (docs/performance.md).
    """
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if kind == "ddim":
        return DDIMScheduler.from_config(train_scheduler_config)
    if kind == "ddpm":
        return DDPMScheduler.from_config(train_scheduler_config)
    # DDIM clips each step's x0 prediction to [-1, 1] when the schedule says clip_sample (pixel models); the
    # multistep solvers do the same through thresholding with a maximum of 1 (their threshold s = clamp(q, 1, 1))
    clip = dict(train_scheduler_config).get("clip_sample", False)
    clip_kw = {"thresholding": True, "sample_max_value": float(dict(train_scheduler_config).get(
        "clip_sample_range", 1.0))} if clip else {}
    if kind == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(train_scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2, **clip_kw)
    if kind == "unipc":
        return UniPCMultistepScheduler.from_config(train_scheduler_config, **clip_kw)
    raise ConfigError(f"unknown sampling scheduler '{kind}' (known: {', '.join(SAMPLING_SCHEDULERS)})")
