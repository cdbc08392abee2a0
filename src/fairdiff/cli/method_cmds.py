"""``fairdiff train-heads`` and the distribution-guidance options of ``fairdiff sample``.

``sample`` itself belongs to :mod:`fairdiff.cli.run_cmds`; this module adds ``--guidance/--target/--scale/
--temperature/--guidance-loss`` to that parser and wraps its command so a guided run goes through
:func:`fairdiff.sampling.guided.guide_run`, the path the bench's guidance cells take too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.models.unet import SAMPLING_SCHEDULERS
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("train-heads", help="train per-step h-space attribute heads for distribution guidance")
    p.add_argument("run", help="a trained run folder (its data config gives the images and group labels)")
    p.add_argument("--out", "-o", required=True, help="heads folder to write (a diffusers model folder with "
                   "record.json; replaced when it holds fairdiff heads)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps the heads are for (sample with the same)")
    p.add_argument("--scheduler", choices=list(SAMPLING_SCHEDULERS), default="ddim", help="sampling schedule")
    p.add_argument("--n-per-step", type=int, default=512, help="training images used per step (0 = all)")
    p.add_argument("--mode", choices=["noise", "invert"], default="invert",
                   help="h from images noised to each step, or DDIM-inverted (default)")
    p.add_argument("--pool", choices=["flatten", "mean"], default="flatten", help="head input: h flattened or "
                   "averaged over space")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-step lines")
    p.set_defaults(func=cmd_train_heads)

    sp = sub.choices.get("sample")
    if sp is None:
        return
    g = sp.add_argument_group("distribution guidance")
    g.add_argument("--guidance", metavar="HEADS", help="heads folder from 'fairdiff train-heads' (or a heads "
                   ".safetensors file of earlier versions)")
    g.add_argument("--target", default=None, help="target shares, e.g. 0.5,0.5 (default: uniform)")
    g.add_argument("--scale", type=float, default=None, help="guidance step size per image (0 = unguided)")
    g.add_argument("--temperature", type=float, default=8.0,
                   help="softmax temperature of the heads (8 as in the paper; use ~1 for a non-uniform target, "
                   "since a high one pulls the predicted shares toward uniform)")
    g.add_argument("--guidance-loss", choices=["chi2", "kl"], default="chi2")
    g.add_argument("--force", action="store_true",
                   help="use heads fitted on another model than this run's (a warning instead of an error)")
    plain = sp.get_default("func")
    sp.set_defaults(func=_guided(plain))


def _guided(plain):
    """Wrap the plain ``sample`` command: without --guidance it runs unchanged."""

    def cmd(args: argparse.Namespace) -> int:
        if not getattr(args, "guidance", None):
            if args.target is not None or args.scale is not None:
                raise FairdiffError("--target and --scale need --guidance HEADS")
            return plain(args)
        return cmd_sample_guided(args)

    return cmd


def cmd_sample_guided(args: argparse.Namespace) -> int:
    from fairdiff.cli.run_cmds import resolve_sample_args
    from fairdiff.sampling.guided import guide_run

    if args.scale is None:
        raise FairdiffError("--guidance needs --scale S (try a small sweep; 0 = unguided)")
    resolve_sample_args(args)  # --steps / --scheduler / --eta / --batch-size left out: the run's sample.*
    labels = None
    if args.class_label:
        labels = [args.class_label[i % len(args.class_label)] for i in range(args.n)]
    out, record = guide_run(args.run, args.guidance, args.n, scale=args.scale, target=args.target,
                            temperature=args.temperature, loss=args.guidance_loss, out_dir=args.out, seed=args.seed,
                            batch_size=args.batch_size, steps=args.steps, scheduler=args.scheduler, eta=args.eta,
                            class_labels=labels, device=args.device, png=not args.no_png, progress=not args.quiet,
                            force=args.force)
    print(f"wrote {args.n} guided samples to {out} (target {record['target']}, scale {args.scale})")
    return 0


def cmd_train_heads(args: argparse.Namespace) -> int:

    from fairdiff.data import prepare_data
    from fairdiff.models.heads import HEADS_KIND, save_heads
    from fairdiff.sampling.files import resolve_device
    from fairdiff.sampling.guided import load_guidable
    from fairdiff.runs import read_run_config
    from fairdiff.training.heads import train_heads
    from fairdiff.utils.outputs import check_output_dir

    if args.steps < 1 or args.batch_size < 1 or args.n_per_step < 0:
        raise FairdiffError("--steps and --batch-size must be at least 1, --n-per-step at least 0")
    out = Path(args.out)
    if out.suffix == ".safetensors":
        raise FairdiffError(f"--out {out}: heads are written as a folder; give a folder name (a heads .safetensors "
                            f"file of earlier versions still loads with --guidance)")
    check_output_dir(out, HEADS_KIND, overwrite=True, inputs=[args.run], whole=True)
    dev = resolve_device(args.device)
    cfg = read_run_config(args.run)
    unet, sched_cfg = load_guidable(args.run, dev)
    data = prepare_data(cfg.data)
    res = train_heads(unet, sched_cfg, data.train_images, data.train_groups, args.steps, args.scheduler,
                      heldout_images=data.heldout_images, heldout_labels=data.heldout_groups,
                      num_classes=data.num_groups, n_per_step=args.n_per_step or None, mode=args.mode,
                      pool=args.pool, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    held = res.heldout_accuracy.get("group", [])
    extra = {"run": str(args.run), "heldout_accuracy": res.heldout_accuracy, "train_accuracy": res.train_accuracy,
             "heldout_images": len(data.heldout_images), "seconds": round(res.seconds, 1)}
    save_heads(res.heads, out, extra)
    if held:
        print(f"held-out balanced accuracy: mean {sum(held) / len(held):.3f}, first step {held[0]:.3f}, "
              f"last step {held[-1]:.3f}")
    print(f"trained {args.steps} heads in {res.seconds:.1f} s; wrote {out}")
    return 0
