"""The model folder of a run (``RUN/model/``) and of an export: writing, finding and loading it.

A model folder is a diffusers ``DDPMPipeline`` folder (``unet/``, ``scheduler/``, ``model_index.json``), plus
``vae/`` for a latent model and one folder per objective module (e.g. ``indicator/``: ``model.safetensors`` +
``config.json``). Weights are read and written as safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fairdiff.errors import FairdiffError, RunDirError
from fairdiff.runs.folder import MODEL_DIR, atomic_dir_replace, fresh_dir_beside


def save_module(module: torch.nn.Module, folder: Path, config: dict) -> None:
    """Save a plain module as ``model.safetensors`` + ``config.json`` (the layout diffusers uses)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def load_module_state(folder: Path) -> dict:
    """The state dict saved by :func:`save_module` in ``folder``."""
    return load_file(str(folder / "model.safetensors"))


def write_model_folder(folder: Path, unet, noise_scheduler, extra: dict | None = None, vae=None,
                       marker: str | None = None) -> None:
    """Write a diffusers ``DDPMPipeline`` folder (loadable with ``DDPMPipeline.from_pretrained``) atomically.

    A latent model also gets ``vae/`` (its frozen ``AutoencoderKL``), which sampling decodes through.
    """
    from diffusers import DDPMPipeline

    tmp = fresh_dir_beside(folder)  # a fresh hidden name beside it: never another folder's (e.g. NAME.tmp)
    try:
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(str(tmp), safe_serialization=True)
        for name, (module, config) in (extra or {}).items():
            save_module(module, tmp / name, config)
        if vae is not None:
            vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        if marker is not None:  # fairdiff's own output folder (utils/outputs.py), marked before it appears
            from fairdiff.utils.outputs import write_marker

            write_marker(tmp, marker)
        atomic_dir_replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_dir(run_or_model: str | Path) -> Path:
    """Accept a run folder (uses ``model/``) or a model folder itself."""
    p = Path(run_or_model)
    if (p / MODEL_DIR / "unet").is_dir():
        return p / MODEL_DIR
    if (p / "unet").is_dir():
        return p
    raise RunDirError(f"{p} holds no trained model (expected {p}/{MODEL_DIR}/unet); has training finished?")


def load_run_model(run_or_model: str | Path, device: str | torch.device = "cpu"):
    """Load ``(unet, noise_scheduler_config)`` from a run or model folder."""
    from diffusers import DDPMScheduler, UNet2DModel

    from safetensors import SafetensorError

    md = model_dir(run_or_model)
    try:  # safetensors only: a pickled ``.bin`` beside or instead of the weights is never read
        unet = UNet2DModel.from_pretrained(str(md / "unet"), use_safetensors=True).to(device)
        sched = DDPMScheduler.from_pretrained(str(md / "scheduler"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunDirError(f"cannot load the model in {md}: {first[:300]}") from None
    return unet, sched.config


def load_model_vae(run_or_model: str | Path, device: str | torch.device = "cpu"):
    """The frozen VAE of a latent model (``model/vae/``), or None for a pixel-space model."""
    md = model_dir(run_or_model)
    if not (md / "vae" / "config.json").is_file():
        return None
    from fairdiff.models.vae import load_vae

    return load_vae(md / "vae", device)


def load_model_checked(run_dir: Path, device: str):
    """``(unet, scheduler_config, vae)`` of a run; a truncated or foreign weights file is one line."""
    from safetensors import SafetensorError

    try:
        unet, sched_cfg = load_run_model(run_dir, device)
        vae = load_model_vae(run_dir, device)
    except (OSError, ValueError, SafetensorError) as e:
        first = " ".join(str(e).split())[:200]
        raise FairdiffError(f"cannot load the model of {run_dir} (truncated or not a fairdiff model?): {first}") \
            from None
    return unet, sched_cfg, vae


def model_fingerprint(model_folder: Path) -> dict:
    """The first 16 hex digits of the sha256 of the U-Net weights: which model made the samples."""
    h = hashlib.sha256()
    files = sorted((model_folder / "unet").glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return {"model_hash": h.hexdigest()[:16] if files else None}


def num_train_timesteps(model_folder: Path) -> int | None:
    """The ``num_train_timesteps`` of a model folder's scheduler, or None when it cannot be read."""
    p = model_folder / "scheduler" / "scheduler_config.json"
    try:
        return int(json.loads(p.read_text(encoding="utf-8"))["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


EXPORT_LEGACY = {"export": ["model_index.json", "unet", "scheduler"]}  # exports written before the marker


def export_diffusers(run_or_model: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's U-Net + scheduler (+ ``vae/`` of a latent model) as a diffusers ``DDPMPipeline`` folder."""
    from diffusers import DDPMScheduler

    from fairdiff.utils.outputs import OutputDirError, check_output_dir

    out = Path(out)
    source = model_dir(run_or_model)
    inside = [Path(run_or_model).resolve(), source.resolve()]
    if any(out.resolve() == p or p in out.resolve().parents or out.resolve() in p.parents for p in inside):
        raise OutputDirError(f"export folder {out} overlaps the model it exports ({run_or_model}); choose another")
    check_output_dir(out, "export", overwrite=overwrite, inputs=[run_or_model], legacy_files=EXPORT_LEGACY)
    unet, sched_cfg = load_run_model(run_or_model)
    write_model_folder(out, unet, DDPMScheduler.from_config(sched_cfg), vae=load_model_vae(run_or_model),
                       marker="export")
    return out
