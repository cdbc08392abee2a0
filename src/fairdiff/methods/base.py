"""The objective interface every training method implements.

An objective turns one batch into a loss. It may own extra trainable modules (DDM's indicator), which the
trainer adds to the optimizer, checkpoints and saves with the model. It never owns a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class DataInfo:
    """What an objective may know about the training data (never the images themselves)."""

    num_groups: int
    group_counts: list[int]
    image_shape: tuple[int, int, int]


@dataclass
class LossOutput:
    """``total`` is backpropagated; ``parts`` are logged (floats or 0-d tensors)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor | float] = field(default_factory=dict)


def add_noise(
    x0: torch.Tensor, noise_scheduler, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw noise and timesteps from ``generator`` (on the CPU, so runs reproduce across devices) and noise x0."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
    return noise_scheduler.add_noise(x0, noise, t), noise, t


def predict_noise(unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
    """The denoiser's eps_hat; passes ``class_labels`` when the batch carries a condition."""
    labels = batch.get("class_labels")
    return unet(noisy, t, class_labels=labels).sample


def predicted_x0(noise_scheduler, noisy: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 recovered from eps_hat: (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)."""
    abar = noise_scheduler.alphas_cumprod.to(noisy.device, torch.float32)[t].view(-1, *([1] * (noisy.dim() - 1)))
    return (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()


class Objective:
    """Base class: the plain noise-prediction MSE (the baseline)."""

    name = "baseline"

    @classmethod
    def from_config(cls, options) -> "Objective":
        """Built from the method's own options section (fairdiff.method_options); the base has no options."""
        return cls()

    @property
    def module_configs(self) -> dict[str, dict]:
        """Config written beside each module of :meth:`modules` (``model/<name>/config.json``); none by default."""
        return {}

    def setup(self, info: DataInfo) -> None:
        """Called once before training with what the data looks like."""
        self.info = info

    def prepare(self, unet: nn.Module, train_images: torch.Tensor, train_groups: torch.Tensor) -> dict:
        """Called once with the starting U-Net (before any adapter or wrapping) and the training tensors.

        Objectives that fine-tune a trained model keep what they need here (alignment: a frozen copy and its
        training classifier). Returns facts worth saving with the run (written to ``method.json``).
        """
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """Extra trainable modules owned by this objective (saved as ``model/<name>/``)."""
        return {}

    def draw_probabilities(self, train_groups: torch.Tensor):
        """Per training image, the probability with which the trainer draws it into a batch (a numpy array
        summing to 1), or None for the trainer's seeded epochs (every image once per epoch; the default)."""
        return None

    def bind_modules(self, modules: dict[str, nn.Module]) -> None:
        """Receive the trainer's prepared (device-placed, possibly DDP-wrapped) modules to use in ``loss``."""
        for name, module in modules.items():
            setattr(self, name, module)

    def per_sample_denoise(self, unet: nn.Module, batch: dict, noise_scheduler, generator) -> tuple:
        noisy, noise, t = add_noise(batch["pixel_values"], noise_scheduler, generator)
        eps = predict_noise(unet, noisy, t, batch)
        per_sample = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        return per_sample, eps, noisy, t

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        per_sample, _, _, _ = self.per_sample_denoise(unet, batch, noise_scheduler, generator)
        mse = per_sample.mean()
        return LossOutput(mse, {"denoise": mse.detach()})
