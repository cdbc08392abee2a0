"""The VAE of latent models and Stable-Diffusion LoRA runs: what ``train --vae``, ``data tiny-sd``, ``train --sd``,
``sample`` (an SD run) and ``export`` (an SD run) call, and their old spellings ``train-vae``, ``sd-init``,
``sd-finetune``, ``sd-sample``, ``sd-export`` (hidden aliases that print the new spelling)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.cli.aliases import old_command, set_func
from fairdiff.cli.common import add_config_args, check_out, mark_out, resolve_config


def register(sub) -> None:
    """The old spellings, hidden from ``--help``: ``train-vae`` (now ``train --vae``), ``sd-init`` (``data
    tiny-sd``), ``sd-finetune`` (``train --sd``), ``sd-sample`` (``sample``), ``sd-export`` (``export``)."""
    p = old_command(sub, "train-vae", "fairdiff train --vae")
    add_config_args(p)
    p.add_argument("--out", "-o", required=True, help="output folder (holds vae/, metrics.json, recon.png)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "-q", action="store_true")
    set_func(p, cmd_train_vae)

    p = old_command(sub, "sd-init", "fairdiff data tiny-sd")
    add_tiny_sd_args(p)
    set_func(p, cmd_sd_init)

    p = old_command(sub, "sd-finetune", "fairdiff train --sd")
    add_config_args(p)
    p.add_argument("--sd", required=True, help="local diffusers Stable Diffusion folder (never downloaded)")
    p.add_argument("--out", "-o", required=True, help="run folder")
    p.add_argument("--prompt", default="a photo", help="the one generic training prompt")
    p.add_argument("--prompts-file", help="one prompt per line, cycled over the training images")
    p.add_argument("--prompt-groups", metavar="FILE",
                   help="YAML/JSON 'prompt: [values]': each data.groups value's images get that prompt")
    p.add_argument("--prompt-targets", metavar="FILE",
                   help="method align: YAML/JSON 'prompt: [target shares] | uniform | preserve'")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many optimizer steps")
    set_func(p, cmd_sd_finetune)

    p = old_command(sub, "sd-sample", "fairdiff sample")
    p.add_argument("run", help="sd-finetune run folder")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", "-o", help="output folder (default RUN/samples)")
    p.add_argument("--prompt", help="default: the training prompt")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--no-lora", action="store_true", help="sample the base model (for comparison)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    set_func(p, cmd_sd_sample)

    p = old_command(sub, "sd-export", "fairdiff export")
    p.add_argument("run", help="finished sd-finetune run folder")
    p.add_argument("out", help="folder for the merged diffusers StableDiffusionPipeline")
    p.add_argument("--overwrite", action="store_true")
    set_func(p, cmd_sd_export)


def add_tiny_sd_args(p) -> None:
    """``data tiny-sd`` (and the old ``sd-init``)."""
    p.add_argument("out", help="folder for the diffusers StableDiffusionPipeline")
    p.add_argument("--resolution", type=int, default=32, help="image size the stack is built for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", help="use a VAE trained by 'fairdiff train --vae' (3-channel) instead of a random one")
    p.add_argument("--overwrite", action="store_true")


def cmd_train_vae(args: argparse.Namespace) -> int:
    from fairdiff.training.vae import train_vae

    cfg = resolve_config(args)
    if cfg is None:
        return 0
    from fairdiff.sampling.files import resolve_device

    out = args.out or f"runs/{cfg.name}-vae"
    device = resolve_device(args.device)
    check_out(out, "vae", overwrite=args.overwrite, legacy={"vae": ["vae", "metrics.json"]}, whole=True)
    res = train_vae(cfg, out, overwrite=args.overwrite, quiet=args.quiet, device=device)
    mark_out(out, "vae")
    print(f"trained VAE {res.steps} steps in {res.seconds:.1f} s: held-out reconstruction MSE {res.recon_mse:.4f}"
          f" (PSNR {res.psnr:.1f} dB), scaling factor {res.scaling_factor:.4f}; use model.vae={out}")
    return 0


def cmd_sd_init(args: argparse.Namespace) -> int:
    from fairdiff.models.sd import build_tiny_sd

    from fairdiff.errors import FairdiffError

    if args.resolution < 8 or args.resolution % 8:
        raise FairdiffError(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    if args.vae is not None:
        from fairdiff.models.vae import vae_folder

        vae_folder(args.vae)  # one line when it holds no trained VAE, before anything is written
    check_out(args.out, "sd", overwrite=args.overwrite, inputs=[args.vae] if args.vae else (),
              legacy={"sd": ["model_index.json"]}, whole=True)
    out = build_tiny_sd(args.out, resolution=args.resolution, seed=args.seed, overwrite=args.overwrite,
                        vae_path=args.vae)
    mark_out(out, "sd")
    print(f"wrote a small random Stable-Diffusion-shaped pipeline to {out}")
    return 0


def cmd_sd_finetune(args: argparse.Namespace) -> int:
    from fairdiff.errors import FairdiffError

    if args.stop_after is not None and args.stop_after < 1:
        raise FairdiffError(f"--stop-after must be at least 1, got {args.stop_after}")
    args.overrides = [*args.overrides, f"model.pretrained={args.sd}"]  # the SD folder is the model it starts from
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    from fairdiff.training.trainer import finetune_sd_lora

    out = args.out or f"runs/{cfg.name}"
    res = finetune_sd_lora(cfg, args.sd, out, prompt=args.prompt, prompts_file=args.prompts_file,
                           prompt_groups=args.prompt_groups, prompt_targets=args.prompt_targets,
                           overwrite=args.overwrite, quiet=args.quiet, resume=args.resume, stop_after=args.stop_after)
    print(f"fine-tuned LoRA ({cfg.method.name}) {res.steps} optimizer steps in {res.seconds:.1f} s, final loss "
          f"{res.final_loss:.4f}; run folder {out}")
    return 0


def _check_sd_steps(run: Path, steps: int) -> None:
    """--steps within the base pipeline's schedule (when its scheduler config can be read)."""
    import json

    from fairdiff.errors import FairdiffError
    from fairdiff.runs import SD_META

    try:
        base = Path(json.loads((run / SD_META).read_text(encoding="utf-8"))["sd"])
        total = int(json.loads((base / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
                    ["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the loader reports a broken run or base folder with its own message
    if steps > total:
        raise FairdiffError(f"--steps {steps}: the model was trained with {total} timesteps; use 1..{total}")


def cmd_sd_sample(args: argparse.Namespace) -> int:
    """The old ``sd-sample`` (its defaults: 16 images, 25 steps, CFG 1, 16 images a batch)."""
    from fairdiff.errors import FairdiffError
    from fairdiff.runs import SD_META, is_sd_run

    check_sd_sample_args(args.n, args.steps, 16, args.guidance_scale, "--guidance-scale")
    run = Path(args.run)
    if not is_sd_run(run):
        raise FairdiffError(f"{run} is not an sd-finetune run (no {SD_META})")
    return sample_sd(run, n=args.n, out=args.out, prompt=args.prompt, seed=args.seed, steps=args.steps,
                     cfg_scale=args.guidance_scale, lora=not args.no_lora, device=args.device,
                     cfg_flag="--guidance-scale")


def check_sd_sample_args(n: int, steps: int, batch_size: int, cfg_scale: float, cfg_flag: str) -> None:
    import math

    from fairdiff.errors import FairdiffError

    if n < 1 or steps < 1:
        raise FairdiffError("--n and --steps must be at least 1")
    if batch_size < 1:
        raise FairdiffError(f"--batch-size must be at least 1, got {batch_size}")
    if not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise FairdiffError(f"{cfg_flag} must be a finite number >= 0, got {cfg_scale}")


def sample_sd(run: str | Path, *, n: int, out: str | None, prompt: str | None, seed: int, steps: int,
              cfg_scale: float, lora: bool, device: str | None, batch_size: int = 16,
              cfg_flag: str = "--cfg-scale") -> int:
    """Draw ``n`` images from an SD LoRA run through its pipeline (``sample RUN`` and the old ``sd-sample``)."""
    from fairdiff.runs import prepare_samples_dir
    from fairdiff.sampling.files import resolve_device
    from fairdiff.sampling.sd import sample_sd_run

    check_sd_sample_args(n, steps, batch_size, cfg_scale, cfg_flag)
    run = Path(run)
    device = resolve_device(device)
    _check_sd_steps(run, steps)
    prepare_samples_dir(Path(out) if out else run / "samples", [run])
    res = sample_sd_run(run, n, out_dir=out, prompt=prompt, seed=seed, steps=steps, guidance_scale=cfg_scale,
                        lora=lora, device=device, batch_size=batch_size)
    print(f"wrote {n} samples to {Path(res)}")
    return 0


def cmd_sd_export(args: argparse.Namespace) -> int:
    from fairdiff.sampling.sd import export_sd_run

    check_out(args.out, "sd", overwrite=args.overwrite, inputs=[args.run], legacy={"sd": ["model_index.json"]},
              whole=True)
    out = export_sd_run(args.run, args.out, overwrite=args.overwrite)
    mark_out(out, "sd")
    print(f"wrote {args.run} with its LoRA merged to {out} (a plain Stable Diffusion folder)")
    return 0
