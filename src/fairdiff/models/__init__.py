"""Models: U-Net presets and noise schedulers built from diffusers. Nothing here knows about fairness."""

from fairdiff.models.unet import UNET_PRESETS, build_unet, build_noise_scheduler, build_sampling_scheduler

__all__ = ["UNET_PRESETS", "build_unet", "build_noise_scheduler", "build_sampling_scheduler"]
