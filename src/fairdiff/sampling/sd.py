"""Sampling an ``sd-finetune`` run: the run's local base pipeline with its LoRA applied, one seed per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fairdiff.errors import RunDirError
from fairdiff.models.sd import LORA_FILE
from fairdiff.runs import MODEL_DIR, SD_META, write_samples


PIPELINE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_sd_folder(sd: str | Path, device: str | None = None, precision: str = "fp32"):
    """A local diffusers ``StableDiffusionPipeline`` folder (never downloaded) with a DDIM scheduler, on ``device``,
    its weights in ``precision`` (fp32, fp16 or bf16)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from fairdiff.models.sd import SDFolderError, _quiet_loading, check_sd_folder
    from fairdiff.models.weights import loader_errors

    base = check_sd_folder(sd)  # structure and every weights file's header: one line naming a damaged file
    _quiet_loading()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False,
                                                       use_safetensors=True, local_files_only=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    except loader_errors() as e:
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise SDFolderError(f"--sd {base}: cannot load the pipeline (damaged or foreign component?): {first}") \
            from None
    pipe.set_progress_bar_config(disable=True)
    if precision != "fp32":
        pipe.to(dtype=PIPELINE_DTYPES[precision])
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_sd_pipeline(run_dir: str | Path, lora: bool = True, device: str | None = None):
    """The run's base ``StableDiffusionPipeline`` (local folder) with its LoRA applied (U-Net + text encoder)."""
    from fairdiff.models.weights import PICKLE_SUFFIXES, check_safetensors_file, loader_errors
    from fairdiff.utils.io import read_json_checked

    run_dir = Path(run_dir)
    meta_file = run_dir / SD_META
    lora_file = run_dir / MODEL_DIR / LORA_FILE
    if meta_file.is_file() and not lora_file.is_file() and (run_dir / MODEL_DIR).is_dir():
        pickles = sorted(f.name for f in (run_dir / MODEL_DIR).iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise RunDirError(f"{run_dir}: the LoRA is pickled ({MODEL_DIR}/{pickles[0]}), which fairdiff never "
                              f"loads; expected {MODEL_DIR}/{LORA_FILE} (safetensors)")
    if not meta_file.is_file() or not lora_file.is_file():
        raise RunDirError(f"{run_dir} is not a finished Stable Diffusion LoRA run ('fairdiff train --sd') "
                          f"(expected {SD_META} and {MODEL_DIR}/{LORA_FILE})")
    meta = read_json_checked(meta_file, "sd-finetune run record")
    if not isinstance(meta, dict) or not isinstance(meta.get("sd"), str):
        raise RunDirError(f"{meta_file}: names no base Stable Diffusion folder ('sd'); is it a Stable Diffusion "
                          f"LoRA run?")
    if lora:
        check_safetensors_file(lora_file, f"the LoRA of {run_dir}")  # before the base is loaded: fail fast
    pipe = load_sd_folder(meta["sd"], device="cpu")
    if lora:
        try:
            pipe.load_lora_weights(str(run_dir / MODEL_DIR), weight_name=LORA_FILE)
        except loader_errors() as e:
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise RunDirError(f"cannot apply the LoRA {lora_file} to {meta['sd']} (damaged, or made for another "
                              f"base model?): {first}") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(dev), meta


def load_sd_any(sd: str | Path, device: str | None = None):
    """A local diffusers SD folder, or an ``sd-finetune`` run (its base folder with its LoRA applied)."""
    p = Path(sd)
    if (p / SD_META).is_file():
        return load_sd_pipeline(p, lora=True, device=device)[0]
    return load_sd_folder(p, device=device)


def export_sd_run(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's base pipeline with its LoRA fused into the weights as a plain SD folder at ``out``.

    The result is what ``audit``, ``sd-init --vae``-style tools and a further ``sd-finetune`` take as a model
    (e.g. a prompt-conditioned model with a known bias, made by fine-tuning, then debiased or audited)."""
    import shutil

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunDirError(f"output folder {out} is not empty; use --overwrite")
    pipe, _ = load_sd_pipeline(run_dir, lora=True, device="cpu")
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def sd_image_size(pipe) -> int:
    """The image side a pipeline makes by default (its U-Net's sample size times the VAE's scale factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def generate_sd(pipe, prompt: str, seeds: list[int], *, size: int, steps: int, guidance_scale: float,
                batch_size: int = 16) -> np.ndarray:
    """uint8 images ``[N, 3, size, size]`` for one prompt, image i drawn from a CPU generator seeded ``seeds[i]``:
    the one denoising loop (:func:`fairdiff.sampling.sd_guided.sd_generate`), which gives the diffusers
    pipeline's images bit for bit (tested against ``pipe(...)``)."""
    from fairdiff.sampling.sd_guided import sd_generate

    return sd_generate(pipe, prompt, list(seeds), size=size, steps=steps, cfg_scale=guidance_scale,
                       batch_size=batch_size).images


def sample_sd_run(run_dir: str | Path, n: int, *, out_dir: str | Path | None = None, prompt: str | None = None,
                  seed: int = 0, steps: int = 25, guidance_scale: float = 1.0, lora: bool = True,
                  device: str | None = None, batch_size: int = 16) -> Path:
    """Draw ``n`` images (image i from seed + i) through the diffusers pipeline with the run's LoRA."""
    pipe, meta = load_sd_pipeline(run_dir, lora=lora, device=device)
    text = prompt or meta["prompts"][0]
    size = meta["latent_shape"][-1] * pipe.vae_scale_factor
    seeds = list(range(seed, seed + n))
    imgs = generate_sd(pipe, text, seeds, size=size, steps=steps, guidance_scale=guidance_scale,
                       batch_size=batch_size)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "samples"
    info = {"run": str(run_dir), "n": n, "seed": seed, "steps": steps, "prompt": text, "lora": lora,
            "guidance_scale": guidance_scale}
    return write_samples(out_dir, imgs, seeds, None, info)


def sd_weights_fingerprint(sd: str | Path) -> dict | None:
    """Which model --sd is (what heads record and are checked against): the SHA-256 of its U-Net weights, and for
    an sd-finetune run also of its LoRA."""
    from fairdiff.models.heads import model_fingerprint
    from fairdiff.utils.io import read_json_checked

    p = Path(sd)
    if (p / SD_META).is_file():
        base = read_json_checked(p / SD_META, "sd-finetune run record").get("sd")
        fp = model_fingerprint(Path(base) / "unet", {"lora_sha256": p / MODEL_DIR / LORA_FILE})
        if fp is not None:
            fp["path"] = str(p.resolve())
        return fp
    return model_fingerprint(p / "unet")
