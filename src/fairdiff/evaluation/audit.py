"""Prompt audit of a local text-to-image pipeline: N images per prompt, one judge, the prompts ranked by bias.

``run_audit`` either generates the images (a local diffusers Stable Diffusion folder, never downloaded; image i of
every prompt from seed + i) or reads images made elsewhere (``images_dir``: one subfolder per prompt, see
:func:`image_groups`), judges each prompt with the evaluator (shares, strict FD with CI, valid rate, corrected
shares where the judge has reference images) and writes the report (:mod:`fairdiff.evaluation.audit_report`).

The output folder::

    DIR/
      .fairdiff.json          marker of kind ``audit``
      audit_settings.json     what the images and verdicts depend on; a later command must match it
      prompts/<slug>/         one per prompt: prompt.txt, samples/ (a fairdiff samples folder), partial/ (images
                              of an unfinished prompt), metrics.json, report.md, shares.png, samples.png
      report.md  audit.json  audit.csv  shares.png

Resuming: a prompt with ``metrics.json`` is done and kept; an interrupted prompt keeps the images it finished
(``partial/``) and makes only the missing seeds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.audit_inputs import (
    AUDIT_KIND,
    PROMPTS_DIR,
    SETTINGS_FILE,
    AuditJudge,
    check_out,
    image_groups,
    judge_prompt,
    make_judge,
    open_out,
    prompt_slug,
    read_prompts,
    sd_fingerprint,
)

__all__ = ["AUDIT_KIND", "PROMPTS_DIR", "SETTINGS_FILE", "AuditJudge", "generate_prompt", "image_groups",
           "make_judge", "prompt_slug", "read_prompts", "run_audit"]


def _read_partial(folder: Path, seeds: list[int], size: int) -> dict[int, np.ndarray]:
    """The images of an interrupted prompt that were finished (``seedNNNNNN.png``; a damaged file is redone)."""
    from fairdiff.data.sources import read_image
    from fairdiff.errors import DataError

    have = {}
    for s in seeds:
        f = folder / f"seed{s:06d}.png"
        if f.is_file():
            try:
                img = read_image(f, "RGB").transpose(2, 0, 1)
            except DataError:
                continue
            if img.shape == (3, size, size):
                have[s] = img
    return have


def generate_prompt(pipe, prompt: str, pdir: Path, seeds: list[int], *, size: int, steps: int,
                    guidance_scale: float, batch_size: int, meta: dict, log: Callable[[str], None]) -> Path:
    """Make one prompt's samples folder, keeping images an interrupted run finished (``pdir/partial``)."""
    from fairdiff.runs import write_samples
    from fairdiff.sampling.sd import generate_sd
    from fairdiff.utils.images import save_png

    partial = pdir / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    have = _read_partial(partial, seeds, size)
    missing = [s for s in seeds if s not in have]
    if have:
        log(f"  continuing: {len(have)} of {len(seeds)} images kept from the interrupted run")
    for i in range(0, len(missing), batch_size):
        chunk = missing[i : i + batch_size]
        imgs = generate_sd(pipe, prompt, chunk, size=size, steps=steps, guidance_scale=guidance_scale,
                           batch_size=batch_size)
        for img, s in zip(imgs, chunk):
            tmp = partial / f".seed{s:06d}.tmp.png"
            save_png(img, tmp)
            tmp.replace(partial / f"seed{s:06d}.png")  # atomic: a file in partial/ is a whole image
            have[s] = img
    images = np.stack([have[s] for s in seeds])
    out = write_samples(pdir / "samples", images, seeds, None, meta)
    shutil.rmtree(partial, ignore_errors=True)
    return out


def _check_generation(sd: Path, n, steps: int, guidance_scale: float, seed: int, batch_size: int,
                      precision: str) -> None:
    """The numbers of a generating audit, checked before anything is loaded."""
    from fairdiff.sampling.sd import PIPELINE_DTYPES

    if precision not in PIPELINE_DTYPES:
        raise FairdiffError(f"--precision must be one of {', '.join(PIPELINE_DTYPES)}, got {precision!r}")
    if n is None or n < 1:
        raise FairdiffError(f"--n must be at least 1 (images per prompt), got {n}")
    if steps < 1 or batch_size < 1:
        raise FairdiffError(f"--steps and --batch-size must be at least 1, got {steps} and {batch_size}")
    if seed < 0:
        raise FairdiffError(f"--seed must be >= 0, got {seed}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise FairdiffError(f"--guidance-scale must be a finite number >= 0, got {guidance_scale}")
    try:
        total = int(json.loads((sd / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
                    ["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the loader reports a broken scheduler with its own message
    if steps > total:
        raise FairdiffError(f"--steps {steps}: the model was trained with {total} timesteps; use 1..{total}")


def _sd_size(sd: Path) -> int | None:
    """The image side the pipeline makes (U-Net sample size x VAE scale factor), from the config files."""
    try:
        unet = json.loads((sd / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((sd / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the loader reports a broken folder with its own message


def _image_count(folder: Path) -> int:
    """How many images a prompt's subfolder holds (``samples.npz``, else its image files)."""
    from fairdiff.data.sources import IMAGE_EXTS
    from fairdiff.evaluation.samples import OWN_PNGS, sample_count

    if (folder / "samples.npz").is_file():
        return sample_count(folder / "samples.npz")
    return sum(1 for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.name not in OWN_PNGS)


def _retitle(report: Path, prompt: str) -> None:
    lines = report.read_text(encoding="utf-8").split("\n")
    lines[0] = f"# Audit prompt: {prompt}"
    report.write_text("\n".join(lines), encoding="utf-8")


def run_audit(out: str | Path, *, sd: str | Path | None = None, images_dir: str | Path | None = None,
              prompts: list[str] | None = None, prompts_file: str | Path | None = None, n: int | None = None,
              seed: int = 0, steps: int = 25, guidance_scale: float = 7.5, judge=None, data_cfg=None,
              eval_cfg=None, target=None, bootstrap: int | None = None, device: str | None = None,
              batch_size: int = 8, precision: str = "fp32", progress: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Audit the prompts of a local SD folder (``sd``) or of images made elsewhere (``images_dir``); returns what
    ``audit.json`` holds. ``judge``: 'auto' (needs ``data_cfg``), an .onnx / TorchScript path or a Classifier."""
    from fairdiff.evaluation.audit_report import write_audit
    from fairdiff.evaluation.report import write_report
    from fairdiff.evaluation.samples import load_images
    from fairdiff.models.sd import check_sd_folder
    from fairdiff.utils.io import read_json

    if (sd is None) == (images_dir is None):
        raise FairdiffError("give a Stable Diffusion folder or --images FOLDER (one of them)")
    if sd is not None:
        sd = check_sd_folder(sd)
        texts = read_prompts(prompts_file, prompts)
        _check_generation(sd, n, steps, guidance_scale, seed, batch_size, precision)
        from fairdiff.sampling.files import resolve_device

        device = resolve_device(device)
        if precision == "fp16" and device == "cpu":
            raise FairdiffError("--precision fp16 needs a GPU; on the CPU use fp32 or bf16")
        groups = [(t, None) for t in texts]
        inputs = [sd] + ([Path(prompts_file)] if prompts_file else [])
    else:
        if prompts or prompts_file:
            raise FairdiffError("--images: the subfolders are the prompts; --prompts / --prompt are for generating")
        if n is not None and n < 1:
            raise FairdiffError(f"--n must be at least 1, got {n}")
        groups = image_groups(images_dir)
        for _, folder in groups if n is not None else ():
            have = _image_count(folder)
            if have < n:
                raise FairdiffError(f"--n {n}: {folder} holds only {have} images")
        inputs = [Path(images_dir)]
    out = check_out(out, inputs)
    jd = make_judge(judge, data_cfg, eval_cfg, target=target, bootstrap=bootstrap, progress=progress)
    if sd is not None:
        settings = {"mode": "generate", "sd": sd_fingerprint(sd), "n": n, "seed": seed, "steps": steps,
                    "guidance_scale": guidance_scale, "scheduler": "ddim", "precision": precision, **jd.settings}
    else:
        settings = {"mode": "images", "images": str(Path(images_dir).resolve()), "n": n, **jd.settings}
    size = _sd_size(sd) if sd is not None else None
    if size is not None:  # the judge must take the images the pipeline makes: known before any work
        jd.classifier.check_judge(np.zeros((2, 3, size, size), np.uint8))
    open_out(out, settings)
    pipe = None
    rows = []
    for i, (prompt, folder) in enumerate(groups, 1):
        slug = prompt_slug(prompt)
        pdir = out / PROMPTS_DIR / slug
        pdir.mkdir(parents=True, exist_ok=True)
        (pdir / "prompt.txt").write_text(prompt + "\n", encoding="utf-8")
        if (pdir / "metrics.json").is_file():
            m = read_json(pdir / "metrics.json")
            log(f"[{i}/{len(groups)}] {prompt}: done earlier, kept")
            rows.append(m)
            continue
        if sd is not None:
            seeds = list(range(seed, seed + n))
            samples = pdir / "samples"
            made = read_json(samples / "meta.json") if (samples / "meta.json").is_file() else None
            if not (made and made.get("seeds") == seeds and (samples / "samples.npz").is_file()):
                if pipe is None:
                    pipe, size = _load_pipe(sd, device, precision, jd)
                meta = {"sd": str(sd.resolve()), "prompt": prompt, "n": n, "seed": seed, "seeds": seeds,
                        "steps": steps, "guidance_scale": guidance_scale, "size": size, "scheduler": "ddim",
                        "precision": precision}
                generate_prompt(pipe, prompt, pdir, seeds, size=size, steps=steps, guidance_scale=guidance_scale,
                                batch_size=batch_size, meta=meta, log=log)
            folder = samples
        data = load_images(folder)
        images = data["images"]
        if n is not None:
            if len(images) < n:
                raise FairdiffError(f"--n {n}: {folder} holds only {len(images)} images")
            images = images[:n]
        seeds_arr = data.get("seeds")
        extra = {"prompt": prompt, "slug": slug,
                 "samples": {"path": data["path"], "available": len(data["images"]),
                             "seeds": None if seeds_arr is None else [int(seeds_arr[0]),
                                                                      int(seeds_arr[len(images) - 1])]}}
        m = judge_prompt(jd, images, extra)
        grid = Path(data["path"]).parent / "grid.png" if str(data["path"]).endswith(".npz") else None
        write_report(m, pdir, images, grid_source=grid)
        _retitle(pdir / "report.md", prompt)
        log(f"[{i}/{len(groups)}] {prompt}: N={m['n']} strict FD {m['fd_strict']:.4f} valid {m['valid_rate']:.3f}")
        rows.append(m)
    return write_audit(out, rows, settings, jd)


def _load_pipe(sd: Path, device: str | None, precision: str, jd: AuditJudge):
    """The pipeline, and the image size it makes; the judge must take images of that size (checked here)."""
    from fairdiff.sampling.sd import load_sd_folder, sd_image_size

    pipe = load_sd_folder(sd, device=device, precision=precision)
    size = sd_image_size(pipe)
    jd.classifier.check_judge(np.zeros((2, 3, size, size), np.uint8))
    return pipe, size
