"""``fairdiff train``, ``fairdiff sample``, ``fairdiff export``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.models.unet import SAMPLING_SCHEDULERS
from fairdiff.cli.common import add_config_args, resolve_config
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a denoiser with a method's objective")
    add_config_args(p)
    p.add_argument("--out", "-o", help="run folder (default runs/<name>)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many optimizer steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images from a trained run")
    p.add_argument("run", help="run folder (or a diffusers model folder)")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--out", "-o", help="output folder (default RUN/samples)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    # left out: the run's sample.* settings (its config.yaml), else the defaults (256, 50, ddim, 0)
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's "
                   "sample.batch_size)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--scheduler", choices=list(SAMPLING_SCHEDULERS), default=None,
                   help="sampling schedule (default: the run's sample.scheduler)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta, 0 = deterministic (default: the run's "
                   "sample.eta)")
    p.add_argument("--class-label", type=int, action="append", help="condition (repeat for several; cycled)")
    p.add_argument("--no-png", action="store_true", help="only samples.npz and the grid")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a run's model as a diffusers DDPMPipeline folder")
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_train(args: argparse.Namespace) -> int:
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


SAMPLE_FLAGS = {"batch_size": "--batch-size", "steps": "--steps", "scheduler": "--scheduler", "eta": "--eta"}


def resolve_sample_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the sampling flags left out (None) from the run's ``sample.*`` settings in its config.yaml; a
    folder without one (a diffusers model folder) takes the :class:`~fairdiff.config.SampleConfig` defaults."""
    missing = [k for k in SAMPLE_FLAGS if getattr(args, k, None) is None]
    if not missing:
        return args
    from fairdiff.config import SampleConfig
    from fairdiff.runs import read_run_config

    sc = SampleConfig()
    if (Path(args.run) / "config.yaml").is_file():
        try:
            sc = read_run_config(args.run).sample
        except FairdiffError as e:
            flags = ", ".join(SAMPLE_FLAGS[k] for k in missing)
            raise FairdiffError(f"cannot take the sampling settings from {Path(args.run) / 'config.yaml'} ({e}); "
                                f"give {flags}") from None
    for k in missing:
        setattr(args, k, getattr(sc, k))
    return args


def cmd_sample(args: argparse.Namespace) -> int:
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


def cmd_export(args: argparse.Namespace) -> int:
    from fairdiff.runs import export_diffusers

    out = export_diffusers(args.run, args.out, overwrite=args.overwrite)
    print(f"exported diffusers DDPMPipeline folder to {out}")
    return 0
