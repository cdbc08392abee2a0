"""Sampling a trained run with distribution guidance: the one path behind ``fairdiff sample --guidance`` and the
bench's guidance cells (checks, heads, guidance, the sampling loop, samples on disk)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fairdiff.errors import FairdiffError
from fairdiff.methods.guidance import check_guidable, parse_target
from fairdiff.models.heads import GuidanceHeads, check_heads_model, model_fingerprint, schedule_timesteps
from fairdiff.models.hspace import capture_h
from fairdiff.runs import load_model_checked, prepare_samples_dir
from fairdiff.sampling.files import check_sampling_args, resolve_device, sample_run


def load_guidable(run_dir: str | Path, device: str) -> tuple[nn.Module, dict]:
    """``(unet, scheduler_config)`` of a run that distribution guidance can steer (fitting heads or sampling);
    a latent or class-conditional run, or an unreadable model, is one line."""
    unet, sched_cfg, vae = load_model_checked(Path(run_dir), device)
    check_guidable(unet, vae is not None, run_dir)
    return unet, sched_cfg


def check_heads_fit(heads: GuidanceHeads, unet: nn.Module, sched_cfg, heads_path, run, force: bool = False) -> None:
    """Heads trained on another model (other h-space shape or schedule) are refused before sampling; so are heads
    fitted on a model with other weights (their recorded fingerprint), unless ``force``, which warns."""
    cfg = heads.config
    if list(cfg.timesteps) != schedule_timesteps(cfg.scheduler, sched_cfg, cfg.num_steps):
        raise FairdiffError(f"heads {heads_path} were trained on a model with another noise schedule than {run}; "
                            f"fit heads for this run with 'fairdiff heads fit {run}'")
    c = unet.config
    x = torch.zeros(1, c.in_channels, c.sample_size, c.sample_size, device=next(unet.parameters()).device)
    with torch.no_grad(), capture_h(unet) as hs:
        unet(x, torch.zeros(1, dtype=torch.long, device=x.device))
    shape = list(hs[-1].shape[1:]) if hs else None
    if shape is not None and list(cfg.h_shape) and shape != list(cfg.h_shape):
        raise FairdiffError(f"heads {heads_path} were trained on another model (h-space {list(cfg.h_shape)}, "
                            f"{run} has {shape}); fit heads for this run with 'fairdiff heads fit {run}'")
    check_heads_model(heads, model_fingerprint(unet), heads_path, run, force=force)


def guide_run(
    run_dir: str | Path,
    heads_path: str | Path,
    n: int,
    *,
    scale: float,
    target: str | Sequence[float] | None = None,
    temperature: float = 8.0,
    loss: str = "chi2",
    out_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 256,
    steps: int = 50,
    scheduler: str = "ddim",
    eta: float = 0.0,
    class_labels: list[int] | None = None,
    device: str | None = None,
    png: bool = True,
    progress: bool = True,
    info: Mapping | None = None,
    force: bool = False,
) -> tuple[Path, dict]:
    """Draw ``n`` images (seeds ``seed .. seed+n-1``) from the run in ``run_dir`` guided toward ``target``.

    ``target`` is the heads' attribute shares (``"0.5,0.5"`` or a list; uniform when None); ``scale``,
    ``temperature`` and ``loss`` as in :class:`~fairdiff.methods.guidance.DistributionGuidance`. Everything is
    checked before the model samples: the arguments, the output folder, the heads (their steps and scheduler
    must be the ones asked for, their model this run's) and the run (unconditional, pixel space). The samples'
    ``meta.json`` records ``{"guidance": {heads, target, scale, temperature, loss, **info}}``. Returns the
    samples folder and that guidance record. ``force``: use heads fitted on another model's weights (a warning).
    """
    check_sampling_args(n, steps, eta, batch_size, seed=seed)
    if not math.isfinite(scale) or scale < 0 or not math.isfinite(temperature) or temperature <= 0:
        raise FairdiffError("--scale must be a finite number (0 or more) and --temperature a finite positive number")
    dev = resolve_device(device)
    run = Path(run_dir)
    from fairdiff.runs import model_dir

    prepare_samples_dir(Path(out_dir) if out_dir else run / "samples", [run, model_dir(run)])
    from fairdiff.methods.registry import get_method

    hooks = get_method("guidance")  # its heads loader and guidance class, as the registry names them
    heads = hooks.hook("load")(heads_path, dev)
    cfg = heads.config
    if steps != cfg.num_steps or scheduler != cfg.scheduler:
        raise FairdiffError(f"heads {heads_path} were trained for --steps {cfg.num_steps} --scheduler "
                            f"{cfg.scheduler}; sample with those")
    if len(cfg.attributes) != 1:
        raise FairdiffError("sampling a run guides one attribute; use DistributionGuidance for several")
    unet, sched_cfg = load_guidable(run, dev)
    check_heads_fit(heads, unet, sched_cfg, heads_path, run, force=force)
    del unet
    k = next(iter(cfg.attributes.values()))
    shares = parse_target(target if target is not None else [1 / k] * k, k)
    guidance = hooks.hook("guide")(heads, shares, scale, temperature=temperature, loss=loss)
    record = {"heads": str(heads_path), "target": shares, "scale": scale, "temperature": temperature, "loss": loss,
              **(info or {})}
    out = sample_run(run_dir, n, out_dir=out_dir, seed=seed, batch_size=batch_size, steps=steps, scheduler=scheduler,
                     eta=eta, class_labels=class_labels, guidance=guidance, device=dev, png=png, progress=progress,
                     meta={"guidance": record})
    return out, record
