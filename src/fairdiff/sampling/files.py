"""Sampling a trained run to disk: PNGs with the seed in the name, ``samples.npz`` and a grid PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fairdiff.errors import FairdiffError
from fairdiff.runs import (
    SAMPLES_DIR,
    is_sd_run,
    load_model_checked,
    model_dir,
    model_fingerprint,
    num_train_timesteps,
    prepare_samples_dir,
    read_samples_meta,
    write_samples,
)
from fairdiff.sampling.sampler import Guidance, sample
from fairdiff.utils.images import to_uint8


DEVICE_KINDS = ("cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | None) -> str:
    """``device`` checked (cpu, cuda, cuda:N or mps, and present on this machine), or the default one."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    d = str(device).strip()
    if d == "cpu":
        return d
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise FairdiffError("--device mps: no Apple GPU (MPS) on this machine; use cpu")
        return d
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not torch.cuda.is_available():
            raise FairdiffError(f"--device {d}: no CUDA GPU on this machine; use cpu")
        if d != "cuda" and int(d[5:]) >= torch.cuda.device_count():
            raise FairdiffError(f"--device {d}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return d
    raise FairdiffError(f"--device {device!r}: expected one of {', '.join(DEVICE_KINDS)}")


# image i uses seed + i; seeds are stored as int64 (samples.npz) and seed torch generators
MAX_SEED = 2**63 - 1


def check_sampling_args(n: int, steps: int, eta: float, batch_size: int,
                        num_train_timesteps: int | None = None, seed: int | None = None) -> None:
    """One-line errors for sampling arguments that would fail late or give silently wrong images."""
    if n < 1:
        raise FairdiffError(f"--n must be at least 1, got {n}")
    if seed is not None and seed < 0:
        raise FairdiffError(f"--seed must be at least 0, got {seed}")
    if seed is not None and seed + n - 1 > MAX_SEED:
        raise FairdiffError(f"--seed {seed}: image i uses seed + i, which must stay at most {MAX_SEED} (2**63 - 1)")
    if batch_size < 1:
        raise FairdiffError(f"--batch-size must be at least 1, got {batch_size}")
    if steps < 1:
        raise FairdiffError(f"--steps must be at least 1, got {steps}")
    if num_train_timesteps is not None and steps > num_train_timesteps:
        raise FairdiffError(f"--steps {steps}: the model was trained with {num_train_timesteps} timesteps; "
                            f"use 1..{num_train_timesteps}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise FairdiffError(f"--eta must be a number in [0, 1] (0 = deterministic DDIM), got {eta}")


# what makes two sets of samples of one run the same images (seeds aside: more images extend the same list)
RECIPE_KEYS = ("guidance", "model_hash", "steps", "scheduler", "eta", "seed", "class_labels")


def recipe_difference(made: dict | None, wanted: dict) -> str | None:
    """How the samples described by ``made`` (their meta.json) differ from ``wanted``; None when they match.

    Samples without a record (written before provenance existed) differ only if they claim a guidance."""
    if made is None:
        return None
    diffs = []
    for k in RECIPE_KEYS:
        if k not in made and k != "guidance":
            continue
        a, b = made.get(k), wanted.get(k)
        if k == "model_hash" and (a is None or b is None):
            continue
        if a != b:
            diffs.append(f"{k} {_short(a)} (recorded) vs {_short(b)}")
    return ", ".join(diffs) or None


def _short(v) -> str:
    if isinstance(v, dict):
        return "on" if v else "off"
    if v is None:
        return "none"
    text = str(v)
    return text if len(text) <= 24 else text[:12] + "..."


def check_class_labels(class_labels: list[int] | None, num_class_embeds: int | None) -> None:
    """Class labels only for a class-conditional model, each in [0, K)."""
    if class_labels is None:
        return
    if not num_class_embeds:
        raise FairdiffError("--class-label needs a class-conditional model (this one is unconditional)")
    bad = sorted({c for c in class_labels if not 0 <= c < num_class_embeds})
    if bad:
        raise FairdiffError(f"--class-label {bad[0]}: this model has classes 0..{num_class_embeds - 1}")


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
    keep_different: bool = False,
) -> Path:
    """Draw ``n`` images (seeds ``seed .. seed+n-1``) from a trained run and write them to ``out_dir``.

    Every argument and the output folder are checked before the model runs. ``meta.json`` in the samples folder
    records how they were made (model hash, steps, scheduler, eta, seed, guidance and its settings, passed in
    ``meta["guidance"]``). ``keep_different=True`` refuses to replace samples that were made another way
    (``evaluate`` uses it, so guided samples are never silently replaced by unguided ones).

    The speed options (``precision``, ``channels_last``, ``compile``, ``compile_mode``; see :func:`sample`)
    left at None take the run's ``sample.*`` settings from its ``config.yaml`` (all off unless set there).
    """
    from fairdiff.models import build_sampling_scheduler

    run_dir = Path(run_dir)
    check_sampling_args(n, steps, eta, batch_size, seed=seed)
    from fairdiff.models.unet import SAMPLING_SCHEDULERS

    if scheduler not in SAMPLING_SCHEDULERS:
        raise FairdiffError(f"unknown sampling scheduler '{scheduler}' (known: {', '.join(SAMPLING_SCHEDULERS)})")
    out_dir = Path(out_dir) if out_dir else run_dir / SAMPLES_DIR
    if is_sd_run(run_dir):  # an sd-finetune run: the diffusers pipeline with its LoRA applied
        from fairdiff.sampling.sd import sample_sd_run

        prepare_samples_dir(out_dir, [run_dir])
        return sample_sd_run(run_dir, n, out_dir=out_dir, seed=seed, steps=steps, device=resolve_device(device),
                             batch_size=batch_size)
    dev = resolve_device(device)
    md = model_dir(run_dir)
    inputs = [run_dir, md]
    prepare_samples_dir(out_dir, inputs)
    check_sampling_args(n, steps, eta, batch_size, num_train_timesteps(md))
    labels_given = class_labels is not None
    recipe = {**model_fingerprint(md), "steps": steps, "scheduler": scheduler, "eta": float(eta), "seed": seed,
              "guidance": (meta or {}).get("guidance"),
              "class_labels": list(class_labels) if labels_given else None}
    if keep_different:
        diff = recipe_difference(read_samples_meta(out_dir), recipe)
        if diff:
            raise FairdiffError(f"{out_dir} holds samples made differently ({diff}); they are kept: evaluate them "
                                f"with a smaller --n, or sample into another folder with 'fairdiff sample --out'")
    unet, sched_cfg, vae = load_model_checked(run_dir, dev)
    check_class_labels(class_labels, unet.config.num_class_embeds)
    if unet.config.num_class_embeds and class_labels is None:
        k = unet.config.num_class_embeds
        class_labels = [i % k for i in range(n)]
    seeds = list(range(seed, seed + n))
    sched = build_sampling_scheduler(scheduler, sched_cfg)
    speed = _speed_options(run_dir, precision=precision, channels_last=channels_last, compile=compile,
                           compile_mode=compile_mode)
    info = {"run": str(run_dir), "n": n, "seeds": [seed, seed + n - 1], **recipe,
            **{k: v for k, v in speed.items() if v != _SPEED_DEFAULTS[k]}, **(meta or {})}

    def draw(a: int, b: int, bar_on: bool):
        x = sample(unet, sched, seeds[a:b], batch_size=batch_size, num_steps=steps,
                   class_labels=None if class_labels is None else class_labels[a:b], guidance=guidance, eta=eta,
                   device=dev, progress=bar_on, clip_output=vae is None, **speed)
        if vae is not None:
            from fairdiff.models.vae import decode

            x = decode(vae, x, batch_size)
        return to_uint8(x)

    if guidance is not None or speed.get("compile"):  # one call: a guidance's state, one compiled graph
        return write_samples(out_dir, draw(0, n, progress), seeds, class_labels, info, png=png, inputs=inputs)
    # chunks of whole batches (the same batches, so the same images), each saved beside the folder: the same
    # command after an interruption draws on from the last saved chunk
    from tqdm.auto import tqdm

    from fairdiff.utils.io import sha256_arrays
    from fairdiff.utils.partial import draw_in_chunks, partial_key, partial_path

    partial = partial_path(out_dir)
    key = partial_key(**{**info, "n": n, "batch_size": batch_size,
                         "vae": None if vae is None else sha256_arrays(vae.state_dict().items())})
    bar = tqdm(total=n, desc="sampling", unit="img", disable=not progress, leave=False)
    try:
        images, _ = draw_in_chunks(lambda a, b: draw(a, b, False), n, batch_size, PARTIAL_CHUNK, partial, key,
                                   on_chunk=bar.update)
    finally:
        bar.close()
    out = write_samples(out_dir, images, seeds, class_labels, info, png=png, inputs=inputs)
    partial.unlink(missing_ok=True)
    return out


PARTIAL_CHUNK = 1024  # images between two saves of an unguided sample_run (rounded up to whole batches)


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
