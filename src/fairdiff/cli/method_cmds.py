"""``fairdiff train-heads`` and the distribution-guidance options of ``fairdiff sample``.

``sample`` itself belongs to :mod:`fairdiff.cli.run_cmds`; this module adds ``--guidance/--target/--scale/
--temperature/--guidance-loss`` to that parser and wraps its command so a guided run passes a
:class:`~fairdiff.methods.guidance.DistributionGuidance` to the one sampling loop.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fairdiff.models.unet import SAMPLING_SCHEDULERS
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("train-heads", help="train per-step h-space attribute heads for distribution guidance")
    p.add_argument("run", help="a trained run folder (its data config gives the images and group labels)")
    p.add_argument("--out", "-o", required=True, help="heads file to write (.safetensors; a .json goes beside)")
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
    g.add_argument("--guidance", metavar="HEADS", help="heads file from 'fairdiff train-heads'")
    g.add_argument("--target", default=None, help="target shares, e.g. 0.5,0.5 (default: uniform)")
    g.add_argument("--scale", type=float, default=None, help="guidance step size per image (0 = unguided)")
    g.add_argument("--temperature", type=float, default=8.0,
                   help="softmax temperature of the heads (8 as in the paper; use ~1 for a non-uniform target, "
                   "since a high one pulls the predicted shares toward uniform)")
    g.add_argument("--guidance-loss", choices=["chi2", "kl"], default="chi2")
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


def check_heads_fit(heads, unet, sched_cfg, heads_path, run) -> None:
    """Heads trained on another model (other h-space shape or schedule) are refused before sampling."""
    import torch

    from fairdiff.methods.guidance import schedule_timesteps
    from fairdiff.models.hspace import capture_h

    cfg = heads.config
    if list(cfg.timesteps) != schedule_timesteps(cfg.scheduler, sched_cfg, cfg.num_steps):
        raise FairdiffError(f"heads {heads_path} were trained on a model with another noise schedule than {run}; "
                            f"train heads for this run with 'fairdiff train-heads {run}'")
    c = unet.config
    x = torch.zeros(1, c.in_channels, c.sample_size, c.sample_size, device=next(unet.parameters()).device)
    with torch.no_grad(), capture_h(unet) as hs:
        unet(x, torch.zeros(1, dtype=torch.long, device=x.device))
    shape = list(hs[-1].shape[1:]) if hs else None
    if shape is not None and list(cfg.h_shape) and shape != list(cfg.h_shape):
        raise FairdiffError(f"heads {heads_path} were trained on another model (h-space {list(cfg.h_shape)}, "
                            f"{run} has {shape}); train heads for this run with 'fairdiff train-heads {run}'")


def cmd_sample_guided(args: argparse.Namespace) -> int:
    from fairdiff.methods.guidance import DistributionGuidance, load_heads
    from fairdiff.sampling import sample_run
    from fairdiff.runs import load_model_checked, model_dir, prepare_samples_dir
    from fairdiff.sampling.files import check_sampling_args, resolve_device

    check_sampling_args(args.n, args.steps, args.eta, args.batch_size)
    if args.scale is None:
        raise FairdiffError("--guidance needs --scale S (try a small sweep; 0 = unguided)")
    if not math.isfinite(args.scale) or not math.isfinite(args.temperature) or args.temperature <= 0:
        raise FairdiffError("--scale must be a finite number and --temperature a finite positive number")
    dev = resolve_device(args.device)
    run = Path(args.run)
    md = model_dir(run)
    prepare_samples_dir(Path(args.out) if args.out else run / "samples", [run, md])
    heads = load_heads(args.guidance, dev)
    cfg = heads.config
    if args.steps != cfg.num_steps or args.scheduler != cfg.scheduler:
        raise FairdiffError(f"heads {args.guidance} were trained for --steps {cfg.num_steps} --scheduler "
                            f"{cfg.scheduler}; sample with those")
    attrs = cfg.attributes
    if len(attrs) != 1:
        raise FairdiffError("the CLI guides one attribute; use the library for several")
    unet, sched_cfg, _ = load_model_checked(run, dev)
    check_heads_fit(heads, unet, sched_cfg, args.guidance, run)
    del unet
    k = next(iter(attrs.values()))
    target = args.target if args.target is not None else ",".join([str(1 / k)] * k)
    try:
        guidance = DistributionGuidance(heads, target, args.scale, temperature=args.temperature,
                                        loss=args.guidance_loss)
    except ValueError as e:
        raise FairdiffError(f"--target {target}: {e}") from None
    labels = None
    if args.class_label:
        labels = [args.class_label[i % len(args.class_label)] for i in range(args.n)]
    meta = {"guidance": {"heads": str(args.guidance), "target": guidance.targets[next(iter(attrs))].tolist(),
                         "scale": args.scale, "temperature": args.temperature, "loss": args.guidance_loss}}
    out = sample_run(args.run, args.n, out_dir=args.out, seed=args.seed, batch_size=args.batch_size,
                     steps=args.steps, scheduler=args.scheduler, eta=args.eta, class_labels=labels,
                     guidance=guidance, device=dev, png=not args.no_png, progress=not args.quiet, meta=meta)
    print(f"wrote {args.n} guided samples to {out} (target {meta['guidance']['target']}, scale {args.scale})")
    return 0


def _is_heads_file(path: Path) -> bool:
    """A heads file fairdiff wrote (safetensors with 'fairdiff_heads' metadata), which may be replaced."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return "fairdiff_heads" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def _is_heads_json(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"attributes", "num_steps", "timesteps"} <= set(data)


def cmd_train_heads(args: argparse.Namespace) -> int:

    from fairdiff.data import prepare_data
    from fairdiff.methods.guidance import heads_json_path, train_heads
    from fairdiff.cli.common import check_out_file
    from fairdiff.runs import load_model_checked, read_run_config
    from fairdiff.sampling.files import resolve_device

    if args.steps < 1 or args.batch_size < 1 or args.n_per_step < 0:
        raise FairdiffError("--steps and --batch-size must be at least 1, --n-per-step at least 0")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise FairdiffError(f"--out {out}: give a .safetensors file name")
    check_out_file(out, _is_heads_file, "--out")
    check_out_file(heads_json_path(out), _is_heads_json, "--out (its .json)")
    dev = resolve_device(args.device)
    cfg = read_run_config(args.run)
    unet, sched_cfg, _ = load_model_checked(Path(args.run), dev)
    if unet.config.num_class_embeds:
        raise FairdiffError("train-heads needs an unconditional model (this run conditions on the group)")
    if (Path(args.run) / "model" / "vae").is_dir():
        raise FairdiffError("train-heads supports pixel-space models only (this run is a latent model)")
    data = prepare_data(cfg.data)
    res = train_heads(unet, sched_cfg, data.train_images, data.train_groups, args.steps, args.scheduler,
                      heldout_images=data.heldout_images, heldout_labels=data.heldout_groups,
                      num_classes=data.num_groups, n_per_step=args.n_per_step or None, mode=args.mode,
                      pool=args.pool, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    held = res.heldout_accuracy.get("group", [])
    extra = {"run": str(args.run), "heldout_accuracy": res.heldout_accuracy, "train_accuracy": res.train_accuracy,
             "heldout_images": len(data.heldout_images), "seconds": round(res.seconds, 1)}
    res.heads.save(out, extra)
    if held:
        print(f"held-out balanced accuracy: mean {sum(held) / len(held):.3f}, first step {held[0]:.3f}, "
              f"last step {held[-1]:.3f}")
    print(f"trained {args.steps} heads in {res.seconds:.1f} s; wrote {out} and {heads_json_path(out)}")
    return 0
