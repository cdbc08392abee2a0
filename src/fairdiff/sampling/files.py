"""Sampling a trained run to disk: PNGs with the seed in the name, ``samples.npz`` and a grid PNG."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from fairdiff.errors import FairdiffError, RunDirError
from fairdiff.sampling.sampler import Guidance, sample, save_grid, to_uint8


def write_samples(out_dir: Path, images: np.ndarray, seeds: list[int], class_labels=None, meta: dict | None = None,
                  png: bool = True) -> Path:
    """Write uint8 images to ``out_dir`` (atomically: temp folder, then rename)."""
    from PIL import Image

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if png:
        for img, s in zip(images, seeds):
            a = img.transpose(1, 2, 0)
            Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(tmp / f"seed{s:06d}.png")
    arrays = {"images": images, "seeds": np.asarray(seeds, np.int64)}
    if class_labels is not None:
        arrays["class_labels"] = np.asarray(class_labels, np.int64)
    np.savez_compressed(tmp / "samples.npz", **arrays)
    save_grid(images[:64], tmp / "grid.png", nrow=8)
    if meta is not None:
        from fairdiff.utils.io import write_json

        write_json(tmp / "meta.json", meta)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def sample_run(
    run_dir: str | Path,
    n: int,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 256,
    steps: int = 50,
    scheduler: str = "ddim",
    eta: float = 0.0,
    class_labels: list[int] | None = None,
    guidance: Guidance | None = None,
    device: str | None = None,
    png: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    compile_mode: str | None = None,
) -> Path:
    """Draw ``n`` images (seeds ``seed .. seed+n-1``) from a trained run and write them to ``out_dir``.

    The speed options (``precision``, ``channels_last``, ``compile``, ``compile_mode``; see :func:`sample`)
    left at None take the run's ``sample.*`` settings from its ``config.yaml`` (all off unless set there).
    """
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.training.checkpoint import load_model_vae, load_run_model

    run_dir = Path(run_dir)
    if n < 1:
        raise RunDirError("--n must be at least 1")
    if (run_dir / "sd.json").is_file():  # an sd-finetune run: the diffusers pipeline with its LoRA applied
        from fairdiff.training.sd_lora import sample_sd_run

        return sample_sd_run(run_dir, n, out_dir=out_dir, seed=seed, steps=steps, device=device,
                             batch_size=batch_size)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unet, sched_cfg = load_run_model(run_dir, dev)
    if unet.config.num_class_embeds and class_labels is None:
        k = unet.config.num_class_embeds
        class_labels = [i % k for i in range(n)]
    seeds = list(range(seed, seed + n))
    sched = build_sampling_scheduler(scheduler, sched_cfg)
    vae = load_model_vae(run_dir, dev)  # latent model: the loop runs on latents, decoded afterwards
    speed = _speed_options(run_dir, precision=precision, channels_last=channels_last, compile=compile,
                           compile_mode=compile_mode)
    imgs = sample(unet, sched, seeds, batch_size=batch_size, num_steps=steps, class_labels=class_labels,
                  guidance=guidance, eta=eta, device=dev, progress=progress, clip_output=vae is None, **speed)
    if vae is not None:
        from fairdiff.models.vae import decode

        imgs = decode(vae, imgs, batch_size)
    out_dir = Path(out_dir) if out_dir else run_dir / "samples"
    info = {"run": str(run_dir), "n": n, "seed": seed, "steps": steps, "scheduler": scheduler, "eta": eta,
            **{k: v for k, v in speed.items() if v != _SPEED_DEFAULTS[k]}, **(meta or {})}
    return write_samples(out_dir, to_uint8(imgs), seeds, class_labels, info, png=png)


_SPEED_DEFAULTS = {"precision": "fp32", "channels_last": False, "compile": False, "compile_mode": "default"}


def _speed_options(run_dir: Path, **given) -> dict:
    """The sampler's speed options: those given, else the run's ``sample.*`` settings, else off."""
    cfg_sample = None
    if any(v is None for v in given.values()) and (run_dir / "config.yaml").is_file():
        from fairdiff.config import load_config

        try:
            cfg_sample = load_config(run_dir / "config.yaml").sample
        except FairdiffError:  # a config this version cannot read: the options simply stay off
            cfg_sample = None
    out = {}
    for k, v in given.items():
        if v is None:
            v = getattr(cfg_sample, k, _SPEED_DEFAULTS[k]) if cfg_sample is not None else _SPEED_DEFAULTS[k]
        out[k] = v
    return out


def load_samples(path: str | Path) -> dict:
    """Read a samples folder (``samples.npz``) or a run folder (``samples/samples.npz``)."""
    p = Path(path)
    for cand in (p, p / "samples.npz", p / "samples" / "samples.npz"):
        if cand.is_file():
            with np.load(cand) as z:
                return {k: z[k] for k in z.files}
    raise RunDirError(f"no samples found at {p} (expected samples.npz; run 'fairdiff sample' first)")
