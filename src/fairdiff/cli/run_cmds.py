"""``fairdiff train``, ``fairdiff sample``, ``fairdiff export``: one command each for every kind of model.

``train`` trains a pixel or latent denoiser (``-c CONFIG``), a LoRA on a local Stable Diffusion folder (``--sd``)
or the small VAE of a latent model (``--vae``); ``sample`` draws from a run (a pixel / latent run, or an SD LoRA
run with ``--prompt``), guided by heads (``--heads``), or guides a Stable Diffusion folder (``--sd --heads``);
``export`` writes either kind of run as a plain diffusers folder. The SD and VAE work lives in
:mod:`fairdiff.cli.sd_cmds`, :mod:`fairdiff.cli.sd_guide_cmds` and :mod:`fairdiff.cli.method_cmds`; the old
commands there (``sd-finetune``, ``sd-sample``, ...) are hidden aliases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.cli.aliases import old_flag, set_func
from fairdiff.cli.common import add_config_args, resolve_config, resolve_sample_args
from fairdiff.errors import FairdiffError
from fairdiff.models.unet import SAMPLING_SCHEDULERS

SD_TRAIN_DEFAULT_PROMPT = "a photo"
PIXEL_TEMPERATURE, SD_TEMPERATURE = 8.0, 1.0  # heads' softmax temperature: the paper's 8 for pixel heads, 1 for SD


def register(sub) -> None:
    p = sub.add_parser("train", help="train a denoiser with a method's objective (also: --sd LoRA on Stable "
                                     "Diffusion, --vae the latent model's VAE)")
    add_config_args(p)
    p.add_argument("--out", "-o", help="run folder (default runs/<name>; with --vae runs/<name>-vae)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many optimizer steps")
    s = p.add_argument_group("Stable Diffusion (LoRA fine-tuning; was 'fairdiff sd-finetune')")
    s.add_argument("--sd", metavar="FOLDER", help="local diffusers Stable Diffusion folder to fine-tune with LoRA "
                                                  "(never downloaded)")
    s.add_argument("--prompt", help=f"--sd: the one generic training prompt (default '{SD_TRAIN_DEFAULT_PROMPT}')")
    s.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                   help="--sd: one prompt per line, cycled over the training images")
    old_flag(s, "--prompts-file", "--prompts", "prompts_file")
    s.add_argument("--prompt-groups", metavar="FILE",
                   help="--sd: YAML/JSON 'prompt: [values]': each data.groups value's images get that prompt")
    s.add_argument("--prompt-targets", metavar="FILE",
                   help="--sd, method align: YAML/JSON 'prompt: [target shares] | uniform | preserve'")
    v = p.add_argument_group("VAE (was 'fairdiff train-vae')")
    v.add_argument("--vae", action="store_true",
                   help="fit the small AutoencoderKL of a latent model instead of a denoiser (then set "
                        "model.vae=OUT); its own short loop, no --resume / --stop-after")
    v.add_argument("--device", help="--vae: cpu, cuda, ... (default: cuda when available)")
    set_func(p, cmd_train)

    p = sub.add_parser("sample", help="generate images: a run (pixel, latent or SD LoRA), guided by heads, or a "
                                      "Stable Diffusion folder guided by heads (--sd)")
    p.add_argument("run", nargs="?", help="run folder (or a diffusers model folder); left out with --sd")
    p.add_argument("--n", type=int, default=64, help="number of images (--sd: per prompt)")
    p.add_argument("--out", "-o", help="output folder (default RUN/samples; --sd: required, one subfolder per "
                                       "prompt)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    # left out: the run's sample.* settings (its config.yaml), else the defaults (256, 50, ddim, 0)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's "
                   "sample.batch_size; --sd: 8, the batch the share is steered over)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample.steps; "
                   "--sd: the heads' steps)")
    p.add_argument("--scheduler", choices=list(SAMPLING_SCHEDULERS), default=None,
                   help="sampling schedule (default: the run's sample.scheduler; pixel and latent runs)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta, 0 = deterministic (default: the run's "
                   "sample.eta; pixel and latent runs)")
    p.add_argument("--class-label", type=int, action="append", help="condition (repeat for several; cycled)")
    p.add_argument("--no-png", action="store_true", help="only samples.npz and the grid (pixel and latent runs)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "-q", action="store_true")
    t = p.add_argument_group("text to image (an SD LoRA run, or --sd)")
    t.add_argument("--sd", metavar="FOLDER", help="guide this local Stable Diffusion folder (or SD LoRA run) with "
                                                  "--heads from 'fairdiff heads fit --sd' (was 'sd-guide sample')")
    t.add_argument("--prompt", action="append", default=[],
                   help="a prompt (--sd: repeatable; an SD run: one, default its training prompt)")
    t.add_argument("--prompts", metavar="FILE", help="--sd: text file, one prompt per line (blank and '#' lines "
                   "skipped; a line 'prompt | 0.3,0.7' sets its own target)")
    t.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale (an SD run: default 1; --sd: default the heads' own)")
    old_flag(t, "--guidance-scale", "--cfg-scale", "cfg_scale", type=float)
    t.add_argument("--no-lora", action="store_true", help="an SD run: sample its base model (for comparison)")
    g = p.add_argument_group("distribution guidance")
    g.add_argument("--heads", metavar="HEADS", help="heads folder from 'fairdiff heads fit' (or a heads .safetensors "
                   "file of earlier versions)")
    old_flag(g, "--guidance", "--heads", "heads", metavar="HEADS")
    g.add_argument("--target", default=None, help="target shares, e.g. 0.5,0.5 (default: uniform)")
    g.add_argument("--scale", type=float, default=None,
                   help="guidance step size per image (0 = unguided; a run: required with --heads; --sd: default 1)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"softmax temperature of the heads (default {PIXEL_TEMPERATURE:g} for a run's heads, as in "
                        f"the paper, use ~1 for a non-uniform target since a high one pulls the predicted shares "
                        f"toward uniform; default {SD_TEMPERATURE:g} with --sd)")
    g.add_argument("--guidance-loss", choices=["chi2", "kl"], default="chi2")
    old_flag(g, "--loss", "--guidance-loss", "guidance_loss", choices=["chi2", "kl"])
    g.add_argument("--mode", choices=["x", "h"], default=None,
                   help="--sd: x (default): loss gradient w.r.t. the latent added to the noise prediction; h: edit "
                        "h-space")
    g.add_argument("--force", action="store_true",
                   help="use heads fitted on another model than this one (a warning instead of an error)")
    set_func(p, cmd_sample)

    p = sub.add_parser("export", help="write a run as a diffusers folder (DDPMPipeline; an SD LoRA run: a plain "
                                      "Stable Diffusion folder with its LoRA merged in)")
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true")
    set_func(p, cmd_export)


# ---------------------------------------------------------------------------------------------------------- train

def _given(args: argparse.Namespace, names: dict[str, object]) -> list[str]:
    """The flags among ``names`` (dest -> its value when not given) that were given."""
    from fairdiff.cli.aliases import flag

    return [flag(args, d) for d, unset in names.items() if getattr(args, d, unset) != unset]


def cmd_train(args: argparse.Namespace) -> int:
    sd_only = {"prompt": None, "prompts_file": None, "prompt_groups": None, "prompt_targets": None}
    if args.vae:
        wrong = _given(args, {"sd": None, "resume": None, "stop_after": None, **sd_only})
        if wrong:
            raise FairdiffError(f"{', '.join(wrong)}: not an option of 'fairdiff train --vae' (the VAE has its own "
                                f"short loop)")
        from fairdiff.cli.sd_cmds import cmd_train_vae

        return cmd_train_vae(args)
    if args.device is not None:
        raise FairdiffError("--device is an option of 'fairdiff train --vae' (a denoiser trains on what accelerate "
                            "picks)")
    if args.sd is not None:
        from fairdiff.cli.sd_cmds import cmd_sd_finetune

        if args.prompt is None:
            args.prompt = SD_TRAIN_DEFAULT_PROMPT
        return cmd_sd_finetune(args)
    wrong = _given(args, sd_only)
    if wrong:
        raise FairdiffError(f"{', '.join(wrong)}: options of 'fairdiff train --sd FOLDER' (LoRA on Stable "
                            f"Diffusion)")
    if args.stop_after is not None and args.stop_after < 1:
        raise FairdiffError(f"--stop-after must be at least 1, got {args.stop_after}")
    cfg = resolve_config(args)
    if cfg is None:
        return 0
    from fairdiff.training import train  # (after the config checks: a mistake is reported without the slow import)

    out = Path(args.out or f"runs/{cfg.name}")
    res = train(cfg, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, stop_after=args.stop_after)
    print(f"trained {res.steps} steps in {res.seconds:.1f} s, final loss {res.final_loss:.4f}; run folder {out}")
    return 0


# --------------------------------------------------------------------------------------------------------- sample

_PIXEL_ONLY = {"scheduler": None, "eta": None, "class_label": None, "no_png": False}
_SD_ONLY = {"prompt": [], "prompts": None, "cfg_scale": None, "no_lora": False, "mode": None}


def cmd_sample(args: argparse.Namespace) -> int:
    """One ``sample``: ``--sd`` guides a Stable Diffusion folder, an SD LoRA run is drawn through its pipeline, any
    other run through the one sampler (guided with ``--heads``)."""
    from fairdiff.cli.aliases import flag

    if args.sd is not None:
        if args.run is not None:
            raise FairdiffError(f"give a run folder or --sd FOLDER, not both (got {args.run} and --sd {args.sd})")
        wrong = _given(args, {**_PIXEL_ONLY, "no_lora": False})
        if wrong:
            raise FairdiffError(f"{', '.join(wrong)}: not an option of 'fairdiff sample --sd'")
        if args.heads is None:
            raise FairdiffError("--sd needs --heads HEADS (fit them with 'fairdiff heads fit --sd'; an SD LoRA run "
                                "samples unguided as 'fairdiff sample RUN')")
        if args.out is None:
            raise FairdiffError("--sd needs --out FOLDER (one samples subfolder per prompt)")
        from fairdiff.cli.sd_guide_cmds import cmd_sample as guide

        _fill(args, batch_size=8, scale=1.0, temperature=SD_TEMPERATURE, mode="x")
        args.loss = args.guidance_loss
        return guide(args)
    if args.run is None:
        raise FairdiffError("a run folder is required (or --sd FOLDER --heads HEADS to guide Stable Diffusion)")
    from fairdiff.runs import is_sd_run

    if is_sd_run(args.run):
        wrong = _given(args, {**_PIXEL_ONLY, "heads": None, "target": None, "scale": None, "temperature": None,
                              "mode": None, "prompts": None})
        if wrong:
            raise FairdiffError(f"{', '.join(wrong)}: not an option for an SD LoRA run ({args.run}); guided text to "
                                f"image is 'fairdiff sample --sd {args.run} --heads HEADS'")
        return _sample_sd_run(args)
    wrong = _given(args, _SD_ONLY)
    if wrong:
        raise FairdiffError(f"{', '.join(wrong)}: options for Stable Diffusion (an SD LoRA run or --sd), and "
                            f"{args.run} is not one")
    if args.heads is None:
        if args.target is not None or args.scale is not None:
            raise FairdiffError("--target and --scale need --guidance HEADS, now spelt --heads HEADS (heads from "
                                "'fairdiff heads fit')")
        return _sample_plain(args)
    from fairdiff.cli.method_cmds import cmd_sample_guided

    _fill(args, temperature=PIXEL_TEMPERATURE)
    args.guidance = args.heads
    args.heads_flag = flag(args, "heads")
    return cmd_sample_guided(args)


def _fill(args: argparse.Namespace, **defaults) -> None:
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def _sample_plain(args: argparse.Namespace) -> int:
    from fairdiff.sampling import sample_run

    resolve_sample_args(args)
    labels = None
    if args.class_label:
        labels = [args.class_label[i % len(args.class_label)] for i in range(args.n)]
    out = sample_run(args.run, args.n, out_dir=args.out, seed=args.seed, batch_size=args.batch_size,
                     steps=args.steps, scheduler=args.scheduler, eta=args.eta, class_labels=labels,
                     device=args.device, png=not args.no_png, progress=not args.quiet)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _sample_sd_run(args: argparse.Namespace) -> int:
    """An SD LoRA run (what 'sd-sample' did): its prompt, CFG scale and LoRA on / off; steps and batch size left
    out are the run's sample.* settings."""
    from fairdiff.cli.sd_cmds import sample_sd

    if len(args.prompt) > 1:
        raise FairdiffError("an SD LoRA run samples one --prompt at a time (several prompts with targets: "
                            "'fairdiff sample --sd RUN --heads HEADS')")
    resolve_sample_args(args)
    return sample_sd(args.run, n=args.n, out=args.out, prompt=args.prompt[0] if args.prompt else None,
                     seed=args.seed, steps=args.steps, cfg_scale=1.0 if args.cfg_scale is None else args.cfg_scale,
                     lora=not args.no_lora, device=args.device, batch_size=args.batch_size,
                     cfg_flag=_flag_of(args, "cfg_scale"))


def _flag_of(args: argparse.Namespace, dest: str) -> str:
    from fairdiff.cli.aliases import flag

    return flag(args, dest)


# --------------------------------------------------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace) -> int:
    from fairdiff.runs import is_sd_run

    if is_sd_run(args.run):  # an SD LoRA run: the base pipeline with the LoRA merged in (what 'sd-export' did)
        from fairdiff.cli.sd_cmds import cmd_sd_export

        return cmd_sd_export(args)
    from fairdiff.runs import export_diffusers

    out = export_diffusers(args.run, args.out, overwrite=args.overwrite)
    print(f"exported diffusers DDPMPipeline folder to {out}")
    return 0
