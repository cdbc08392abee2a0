"""Model adapters: what the one trainer (training/trainer.py) asks of the model it trains.

The trainer owns the loop, accelerate, checkpoints, resume, EMA, logging and the speed options; an adapter owns
the model: it builds or loads the trainable modules, turns the prepared data into the training tensor (pixels, or
latents of a frozen VAE), prepares each micro-batch (e.g. the prompts of a text-conditioned U-Net), says which
parameters the EMA and a checkpoint hold, and writes the final model folder and report.

- :class:`UNetAdapter`: a pixel-space U-Net, or a latent one behind the frozen VAE of ``model.vae``; starts fresh
  or from ``model.pretrained`` (optionally with LoRA, merged on save).
- ``SDLoraAdapter`` (training/sd_lora.py): a prompt-conditioned Stable-Diffusion U-Net (and optionally its text
  encoder) with LoRA, started from a local SD folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from fairdiff.config import RunConfig, validate
from fairdiff.errors import ConfigError


class ModelAdapter:
    """The interface, with the defaults of a model whose every parameter is saved and averaged."""

    kind = "run"  # the run folder's kind (utils/outputs.py marker)
    legacy: dict | None = None  # files that identify such a folder written before the marker (None: a train run)
    progress = "train"  # progress-bar label

    def check(self, cfg: RunConfig) -> None:
        """Checks before the run folder is touched (one line on a mistake)."""
        validate(cfg)

    def open(self, cfg: RunConfig) -> None:
        """Read the inputs it starts from (once the run folder is claimed; a mistake there is one line)."""

    def inputs(self) -> list[str]:
        """Further input paths of this run that ``--overwrite`` must never remove."""
        return []

    def check_resume(self, run_dir: Path) -> None:
        """Refuse to resume ``run_dir`` if it was started from other inputs than this run's."""

    def training_tensor(self, cfg: RunConfig, data, device: torch.device) -> torch.Tensor:
        """The tensor the denoiser learns (pixels or latents), on the CPU."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Other images (e.g. a reference set) into the space of :meth:`training_tensor`."""
        return images

    def build(self, cfg: RunConfig, images: torch.Tensor, num_classes: int | None) -> nn.Module:
        """The denoiser: ``model(noisy, t, class_labels).sample`` predicts the noise."""
        raise NotImplementedError

    def wrap_objective(self, objective, cfg: RunConfig):
        """The objective this model trains with (the method's own by default; SD alignment on prompts wraps it)."""
        return objective

    def noise_scheduler(self, cfg: RunConfig):
        raise NotImplementedError

    def run_files(self, cfg: RunConfig, images: torch.Tensor) -> dict[str, dict]:
        """Further JSON files of the run folder (name -> content), written beside ``config.yaml``."""
        return {}

    def finish(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
        """After the objective's ``prepare``: gradient checkpointing, adapters, precision. Returns the model."""
        if cfg.train.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    def ema_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the EMA averages."""
        return list(model.parameters())

    def checkpoint_module(self, model: nn.Module):
        """What a checkpoint's ``model.safetensors`` holds (an object with ``state_dict`` / ``load_state_dict``)."""
        return model

    def on_batch(self, model: nn.Module, idx: torch.Tensor) -> None:
        """Called with the (unwrapped) model and the batch's training indices before each loss."""

    def sample_grid(self, cfg: RunConfig, model: nn.Module, ema, noise_scheduler, path: Path) -> None:
        """A grid of samples at ``train.sample_every`` (nothing by default)."""

    def save(self, run_dir: Path, cfg: RunConfig, model: nn.Module, ema, noise_scheduler, modules: dict) -> None:
        """The final model folder ``run_dir/model`` (EMA weights); ``modules``: name -> (module, config)."""
        raise NotImplementedError

    def report(self, cfg: RunConfig, run_dir: Path, manifest: dict) -> None:
        """``report.md``."""


class TrainableState:
    """A checkpoint view of a model that holds only its trainable parameters (e.g. LoRA on a frozen base)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _params(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self._params().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self._params()
        if set(state) != set(params):
            raise ValueError(f"the checkpoint holds {len(state)} trainable tensors, this model {len(params)}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])


def ema_copy(model: nn.Module, ema) -> nn.Module:
    """A CPU fp32 copy with the EMA weights, in the default memory layout (what is saved and sampled)."""
    model = copy.deepcopy(model).to("cpu").float().to(memory_format=torch.contiguous_format)
    if ema is not None:
        ema.copy_to(model.parameters())
    return model.eval()


class UNetAdapter(ModelAdapter):
    """A ``UNet2DModel`` on pixels, or on the latents of the frozen VAE ``model.vae`` (training/latent.py)."""

    def __init__(self) -> None:
        self.cfg: RunConfig | None = None
        self.vae = None

    def training_tensor(self, cfg: RunConfig, data, device: torch.device) -> torch.Tensor:
        self.cfg, self.device = cfg, device
        if not cfg.model.vae:
            return data.train_images
        from fairdiff.training.latent import encode_dataset

        self.vae, latents = encode_dataset(cfg.model.vae, data.train_images, device)
        return latents

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if not self.cfg.model.vae:
            return images
        from fairdiff.training.latent import encode_dataset

        return encode_dataset(self.cfg.model.vae, images, self.device)[1]

    def build(self, cfg: RunConfig, images: torch.Tensor, num_classes: int | None) -> nn.Module:
        from fairdiff.models import build_unet
        from fairdiff.runs import load_run_model

        c, h, _ = images.shape[1:]
        if not cfg.model.pretrained:
            return build_unet(cfg.model.preset, h, c, num_classes)
        unet, _ = load_run_model(cfg.model.pretrained)
        if unet.config.sample_size != h or unet.config.in_channels != c:
            raise ConfigError(f"model.pretrained: {cfg.model.pretrained} is {unet.config.in_channels}x"
                              f"{unet.config.sample_size} but the data is {c}x{h}")
        return unet

    def noise_scheduler(self, cfg: RunConfig):
        from fairdiff.models import build_noise_scheduler

        return build_noise_scheduler(cfg.model.num_train_timesteps, cfg.model.beta_schedule,
                                     clip_sample=self.vae is None)  # latents are not bounded to [-1, 1]

    def finish(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
        model = super().finish(model, cfg, device)
        if cfg.model.lora:  # fine-tune low-rank adapters only; merged into the U-Net when the model is saved
            from fairdiff.models.lora import add_unet_lora

            model = add_unet_lora(model, cfg.model.unet_lora_targets, cfg.model.lora_rank, cfg.model.lora_alpha)
        return model

    def sample_grid(self, cfg: RunConfig, model: nn.Module, ema, noise_scheduler, path: Path) -> None:
        sample_grid(cfg, ema_copy(model, ema), noise_scheduler, path, vae=self.vae)

    def save(self, run_dir: Path, cfg: RunConfig, model: nn.Module, ema, noise_scheduler, modules: dict) -> None:
        from fairdiff.models.lora import merge_lora
        from fairdiff.runs import write_model_folder

        final = merge_lora(ema_copy(model, ema))
        write_model_folder(run_dir / "model", final, noise_scheduler, modules, vae=self.vae)
        sample_grid(cfg, final, noise_scheduler, run_dir / "train_grid.png", vae=self.vae)

    def report(self, cfg: RunConfig, run_dir: Path, manifest: dict) -> None:
        from fairdiff.training.report import write_train_report

        write_train_report(cfg, run_dir, manifest)


def sample_grid(cfg: RunConfig, unet, noise_scheduler, path: Path, n: int = 16, vae=None) -> None:
    """``n`` DDIM samples (at most 25 steps) of ``unet`` as a PNG grid; a latent model decodes through ``vae``."""
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.sampling import sample
    from fairdiff.utils.images import save_grid, to_uint8

    sched = build_sampling_scheduler("ddim", noise_scheduler.config)
    labels = [i % len(cfg.data.groups) for i in range(n)] if cfg.model.conditional else None
    dev = next(unet.parameters()).device
    imgs = sample(unet, sched, range(n), batch_size=n, num_steps=min(cfg.sample.steps, 25),
                  class_labels=labels, device=dev, progress=False, clip_output=vae is None)
    if vae is not None:  # latent model: decode through the VAE
        from fairdiff.models.vae import decode

        imgs = decode(vae, imgs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(to_uint8(imgs), path, nrow=8)
