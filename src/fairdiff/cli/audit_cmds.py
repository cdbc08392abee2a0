"""``fairdiff audit SD_FOLDER --prompts FILE --n N --out DIR``: the prompts of a local text-to-image model ranked
by bias (or ``fairdiff audit --images FOLDER --out DIR`` for images made elsewhere)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fairdiff.cli.aliases import flag, old_flag, set_func
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("audit", help="prompt audit of a local Stable Diffusion folder (or of images made elsewhere)")
    p.add_argument("sd", nargs="?", metavar="SD_FOLDER", help="local diffusers text-to-image folder (never downloaded)")
    p.add_argument("--prompts", help="text file, one prompt per line (blank lines and '#' lines skipped)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; with or without --prompts)")
    p.add_argument("--images", metavar="FOLDER",
                   help="audit images made elsewhere: one subfolder per prompt (prompt = subfolder name, or its "
                        "entry in FOLDER/prompts.json)")
    p.add_argument("--n", type=int, help="images per prompt (generation: required; --images: first N, default all)")
    p.add_argument("--out", "-o", required=True, help="audit folder (run the same command again to continue)")
    p.add_argument("--seed", type=int, default=0, help="image i of every prompt uses seed + i")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--cfg-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    old_flag(p, "--guidance-scale", "--cfg-scale", "cfg_scale", type=float)
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="weights of the pipeline (fp16: GPU only)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--judge", help="'auto' (domain CNN of --config's data), an .onnx or a TorchScript .pt file "
                                   "(default eval.classifier)")
    p.add_argument("--config", "-c", help="config YAML whose data section the judge is trained / calibrated on "
                                          "(dotted overrides like data.source=mnist are accepted too)")
    p.add_argument("--target", help="target group shares, e.g. 0.5,0.5 (default uniform)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (default eval.bootstrap = 1000)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(overrides=[])
    set_func(p, cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from fairdiff.cli.eval_cmds import parse_target
    from fairdiff.config import load_config
    from fairdiff.evaluation.audit import run_audit

    key = (args.sd or "").split("=", 1)[0]
    if "=" in (args.sd or "") and key and "/" not in key and " " not in key and not Path(args.sd).exists():
        args.overrides, args.sd = [args.sd, *args.overrides], None  # a dotted override, not an SD folder
    if args.images is not None and args.sd is not None:
        raise FairdiffError("give a Stable Diffusion folder or --images FOLDER, not both")
    if args.images is None and args.sd is None:
        raise FairdiffError("give a local Stable Diffusion folder (or --images FOLDER for images made elsewhere)")
    target = parse_target(args.target)
    if not math.isfinite(args.cfg_scale) or args.cfg_scale < 0:
        raise FairdiffError(f"{flag(args, 'cfg_scale')} must be a finite number >= 0, got {args.cfg_scale}")
    data_cfg = eval_cfg = None
    if args.config is not None or args.overrides:
        if args.config is not None and not Path(args.config).is_file():
            raise FairdiffError(f"--config {args.config}: no such file")
        cfg = load_config(args.config, args.overrides)
        data_cfg, eval_cfg = cfg.data, cfg.eval
        if target is not None and len(target) != len(cfg.data.groups):
            raise FairdiffError(f"--target has {len(target)} values but there are {len(cfg.data.groups)} groups")
    log = (lambda _msg: None) if args.quiet else print
    res = run_audit(args.out, sd=args.sd, images_dir=args.images, prompts=args.prompt, prompts_file=args.prompts,
                    n=args.n, seed=args.seed, steps=args.steps, guidance_scale=args.cfg_scale,
                    judge=args.judge, data_cfg=data_cfg, eval_cfg=eval_cfg, target=target, bootstrap=args.bootstrap,
                    device=args.device, batch_size=args.batch_size, precision=args.precision,
                    progress=not args.quiet, log=log)
    top = res["prompts"][0]
    print(f"audited {len(res['prompts'])} prompt(s); most biased: '{top['prompt']}' strict FD {top['fd_strict']:.4f}")
    print(f"wrote {Path(args.out) / 'report.md'}, audit.json, audit.csv, shares.png")
    return 0
