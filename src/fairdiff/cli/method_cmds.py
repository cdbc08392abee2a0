"""``fairdiff heads fit``: per-step h-space heads for distribution guidance, fitted on a run's labelled images
(``heads fit RUN``; the old ``train-heads``) or on a Stable Diffusion folder's own generations labelled by a judge
(``heads fit --sd FOLDER --judge J``; the old ``sd-guide fit-heads``, :mod:`fairdiff.cli.sd_guide_cmds`).

Guided sampling of a run (``sample RUN --heads HEADS``) goes through :func:`cmd_sample_guided` here, i.e.
:func:`fairdiff.sampling.guided.guide_run`, the path the bench's guidance cells take too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.cli.aliases import flag, old_command, old_flag, set_func
from fairdiff.errors import FairdiffError
from fairdiff.models.unet import SAMPLING_SCHEDULERS

# defaults that differ between the two kinds of heads (a run's images / an SD folder's judged generations)
RUN_HEADS = {"steps": 50, "pool": "flatten", "batch_size": 128}
SD_HEADS = {"steps": 25, "pool": "mean", "batch_size": 8}


def register(sub) -> None:
    p = sub.add_parser("heads", help="guidance heads: fit on a run's labelled images, or on a Stable Diffusion "
                                     "folder's own generations labelled by a judge (--sd)")
    hsub = p.add_subparsers(dest="heads_command", metavar="ACTION", parser_class=type(p))
    f = hsub.add_parser("fit", help="fit per-step h-space attribute heads (then 'fairdiff sample ... --heads OUT')")
    f.add_argument("run", nargs="?", help="a trained run folder (its data config gives the images and group "
                                          "labels); left out with --sd")
    f.add_argument("--out", "-o", required=True, help="heads folder to write (a diffusers model folder with "
                   "record.json; replaced when it holds fairdiff heads)")
    f.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps the heads are for, sample with the same (default {RUN_HEADS['steps']}; "
                        f"--sd: {SD_HEADS['steps']} DDIM steps)")
    f.add_argument("--pool", choices=["flatten", "mean"], default=None,
                   help=f"head input: h flattened or averaged over space (default {RUN_HEADS['pool']}; --sd: "
                        f"{SD_HEADS['pool']})")
    f.add_argument("--batch-size", type=int, default=None,
                   help=f"images per batch (default {RUN_HEADS['batch_size']}; --sd: {SD_HEADS['batch_size']})")
    f.add_argument("--seed", type=int, default=0, help="random seed (--sd: image i of every prompt uses seed + i)")
    f.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    f.add_argument("--quiet", "-q", action="store_true", help="no per-step lines")
    r = f.add_argument_group("heads of a run (was 'fairdiff train-heads')")
    r.add_argument("--scheduler", choices=list(SAMPLING_SCHEDULERS), default=None,
                   help="sampling schedule (default ddim)")
    r.add_argument("--n-per-step", type=int, default=None, help="training images used per step (default 512; 0 = "
                                                                "all)")
    r.add_argument("--mode", choices=["noise", "invert"], default=None,
                   help="h from images noised to each step, or DDIM-inverted (default)")
    t = f.add_argument_group("heads of a Stable Diffusion folder (was 'fairdiff sd-guide fit-heads')")
    t.add_argument("--sd", metavar="FOLDER", help="local diffusers Stable Diffusion folder or an SD LoRA run")
    t.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line (blank and '#' lines skipped)")
    t.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    t.add_argument("--judge", help="an .onnx or TorchScript .pt judge (TorchScript: float [-1, 1] [N, C, H, W] -> "
                                   "logits) that labels the generations")
    t.add_argument("--n", type=int, default=None, help="images generated per prompt (default 64)")
    t.add_argument("--heldout", type=float, default=None, help="share of the images kept out of fitting and scored "
                                                               "(default 0.25)")
    t.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default 7.5)")
    old_flag(t, "--guidance-scale", "--cfg-scale", "cfg_scale", type=float)
    set_func(f, cmd_heads_fit)
    set_func(p, _no_heads_action)

    p = old_command(sub, "train-heads", "fairdiff heads fit")
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
    set_func(p, cmd_train_heads)


def _no_heads_action(args: argparse.Namespace) -> int:
    raise FairdiffError("fairdiff heads: give an action, fit (see 'fairdiff heads fit --help')")


def cmd_heads_fit(args: argparse.Namespace) -> int:
    """``heads fit``: --sd fits on an SD folder's judged generations, else on RUN's labelled images."""
    run_only = {"scheduler": None, "n_per_step": None, "mode": None}
    sd_only = {"prompts": None, "prompt": [], "judge": None, "n": None, "heldout": None, "cfg_scale": None}
    if args.sd is not None:
        if args.run is not None:
            raise FairdiffError(f"give a run folder or --sd FOLDER, not both (got {args.run} and --sd {args.sd})")
        wrong = [flag(args, d) for d, unset in run_only.items() if getattr(args, d) != unset]
        if wrong:
            raise FairdiffError(f"{', '.join(wrong)}: not an option of 'fairdiff heads fit --sd'")
        if args.judge is None:
            raise FairdiffError("--sd needs --judge (an .onnx or TorchScript .pt judge that labels the generations)")
        from fairdiff.cli.sd_guide_cmds import cmd_fit_heads

        _fill(args, {**SD_HEADS, "n": 64, "heldout": 0.25})
        return cmd_fit_heads(args)
    if args.run is None:
        raise FairdiffError("a run folder is required (or --sd FOLDER --judge J for heads of Stable Diffusion)")
    wrong = [flag(args, d) for d, unset in sd_only.items() if getattr(args, d) != unset]
    if wrong:
        raise FairdiffError(f"{', '.join(wrong)}: options of 'fairdiff heads fit --sd FOLDER' (heads of Stable "
                            f"Diffusion)")
    _fill(args, {**RUN_HEADS, "scheduler": "ddim", "n_per_step": 512, "mode": "invert"})
    return cmd_train_heads(args)


def _fill(args: argparse.Namespace, defaults: dict) -> None:
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def cmd_sample_guided(args: argparse.Namespace) -> int:
    from fairdiff.cli.common import resolve_sample_args
    from fairdiff.sampling.guided import guide_run

    if args.scale is None:
        heads_flag = getattr(args, "heads_flag", "--guidance")
        raise FairdiffError(f"{heads_flag} needs --scale S (try a small sweep; 0 = unguided)")
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
                            f"file of earlier versions still loads with --heads)")
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
