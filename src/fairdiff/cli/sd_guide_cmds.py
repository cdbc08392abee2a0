"""Distribution guidance for a local text-to-image (Stable Diffusion) pipeline, with heads fitted on the model's own
generations labelled by a judge: what ``fairdiff heads fit --sd`` and ``fairdiff sample --sd`` call. The old
spellings ``fairdiff sd-guide fit-heads`` and ``fairdiff sd-guide sample`` stay as hidden aliases."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fairdiff.cli.aliases import flag, mark_old, old_command, set_func
from fairdiff.errors import FairdiffError

SD_FIT_CFG = 7.5  # classifier-free guidance scale heads are fitted under (sampling takes the heads' own)
TARGET_SEP = " | "  # a line of a guided prompts file: "prompt | 0.5,0.5" (the target is optional)


def register(sub) -> None:
    p = old_command(sub, "sd-guide", "fairdiff heads fit --sd' / 'fairdiff sample --sd")
    s = p.add_subparsers(dest="sd_guide_command", metavar="ACTION", parser_class=type(p))

    f = s.add_parser("fit-heads", help="fit per-step h-space heads on the model's own generations, labelled by a "
                                       "judge")
    _common(f)
    f.add_argument("--judge", required=True,
                   help="an .onnx or TorchScript .pt judge (TorchScript: float [-1, 1] [N, C, H, W] -> logits)")
    f.add_argument("--out", "-o", required=True, help="heads folder (a diffusers model folder)")
    f.add_argument("--n", type=int, default=64, help="images generated per prompt")
    f.add_argument("--steps", type=int, default=25, help="DDIM steps (sampling must use the same)")
    f.add_argument("--pool", default="mean", choices=["mean", "flatten"],
                   help="head input: h averaged over space (mean) or all of it (flatten)")
    f.add_argument("--heldout", type=float, default=0.25, help="share of the images kept out of fitting and scored")
    mark_old(f, "fairdiff heads fit --sd")
    set_func(f, cmd_fit_heads)

    g = s.add_parser("sample", help="guided sampling toward target group shares, one subfolder per prompt "
                                    "(auditable with 'fairdiff audit --images')")
    _common(g)
    g.add_argument("--heads", required=True, help="heads folder from 'fairdiff heads fit --sd'")
    g.add_argument("--target", help="group shares for every prompt, e.g. 0.5,0.5 (default uniform); a prompts-file "
                                    f"line 'prompt{TARGET_SEP}0.3,0.7' sets its own")
    g.add_argument("--scale", type=float, default=1.0, help="distribution guidance scale (0: plain CFG sampling)")
    g.add_argument("--mode", default="x", choices=["x", "h"],
                   help="x: loss gradient w.r.t. the latent added to the noise prediction; h: edit h-space")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the heads")
    g.add_argument("--loss", default="chi2", choices=["chi2", "kl"])
    g.add_argument("--n", type=int, required=True, help="images per prompt")
    g.add_argument("--steps", type=int, help="DDIM steps (default and required: the heads' steps)")
    g.add_argument("--out", "-o", required=True, help="output folder: one samples subfolder per prompt")
    g.add_argument("--force", action="store_true",
                   help="use heads fitted on another model than --sd (a warning instead of an error)")
    mark_old(g, "fairdiff sample --sd")
    set_func(g, cmd_sample)
    set_func(p, lambda _a: _missing_action(p))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sd", required=True, help="local diffusers Stable Diffusion folder or an sd-finetune run")
    p.add_argument("--prompts", help="text file, one prompt per line (blank and '#' lines skipped)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--guidance-scale", dest="cfg_scale", type=float,
                   help="classifier-free guidance scale (fit-heads default 7.5; sample default: the heads' own)")
    p.set_defaults(_spelling={"cfg_scale": "--guidance-scale"})
    p.add_argument("--seed", type=int, default=0, help="image i of every prompt uses seed + i")
    p.add_argument("--batch-size", type=int, default=8, help="images per U-Net batch (sample: the batch the "
                                                             "share is steered over)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def _missing_action(p: argparse.ArgumentParser) -> int:
    raise FairdiffError("give an action: 'fairdiff sd-guide fit-heads ...' or 'fairdiff sd-guide sample ...' (now "
                        "'fairdiff heads fit --sd ...' and 'fairdiff sample --sd ...')")


def _check_sd(sd: str) -> Path:
    from fairdiff.models.sd import check_sd_folder
    from fairdiff.runs import SD_META
    from fairdiff.utils.io import read_json_checked

    p = Path(sd)
    if (p / SD_META).is_file():  # an sd-finetune run: its base folder must be there
        base = read_json_checked(p / SD_META, "sd-finetune run record").get("sd")
        check_sd_folder(base if base else p / "missing-base")
        return p
    return check_sd_folder(p)


def sd_fingerprint(sd: str | Path) -> dict | None:
    """:func:`fairdiff.sampling.sd.sd_weights_fingerprint` (imported when called: the CLI starts without torch)."""
    from fairdiff.sampling.sd import sd_weights_fingerprint

    return sd_weights_fingerprint(sd)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.n < 1 or args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        raise FairdiffError("--n, --steps and --batch-size must be at least 1")
    if args.seed < 0:
        raise FairdiffError(f"--seed must be >= 0, got {args.seed}")
    if args.cfg_scale is not None and (not math.isfinite(args.cfg_scale) or args.cfg_scale < 0):
        raise FairdiffError(f"{flag(args, 'cfg_scale')} must be a finite number >= 0, got {args.cfg_scale}")


def _pipe(args: argparse.Namespace):
    from fairdiff.sampling.files import resolve_device
    from fairdiff.sampling.sd import sd_image_size
    from fairdiff.sampling.sd import load_sd_any

    pipe = load_sd_any(args.sd, device=resolve_device(args.device))
    return pipe, sd_image_size(pipe)


def cmd_fit_heads(args: argparse.Namespace) -> int:
    import numpy as np

    from fairdiff.evaluation.audit_inputs import read_prompts
    from fairdiff.evaluation.judges import load_classifier
    from fairdiff.models.heads import HEADS_KIND, save_heads
    from fairdiff.training.sd_heads import fit_sd_heads
    from fairdiff.utils.outputs import check_output_dir

    _check_numbers(args)
    sd = _check_sd(args.sd)
    read_prompts(args.prompts, args.prompt)  # a missing or empty prompts file is one line before the judge loads
    if not Path(args.judge).is_file():
        raise FairdiffError(f"{flag(args, 'judge')} {args.judge}: no such file (an .onnx or TorchScript .pt judge)")
    check_output_dir(args.out, HEADS_KIND, overwrite=True, inputs=[sd], whole=True)
    clf = load_classifier(args.judge, None)
    args.target = None
    prompts = [p for p, _ in read_guided_prompts(args, clf.num_classes)]  # a sample prompts file works here too
    pipe, size = _pipe(args)
    clf.check_images(np.zeros((1, 3, size, size), np.uint8))
    cfg = SD_FIT_CFG if args.cfg_scale is None else args.cfg_scale
    log = (lambda _m: None) if args.quiet else print
    res = fit_sd_heads(pipe, prompts, lambda im: clf.predict(im, features=False)[0].argmax(1), clf.num_classes,
                       n=args.n, steps=args.steps, cfg_scale=cfg, size=size, pool=args.pool, heldout=args.heldout,
                       seed=args.seed, batch_size=args.batch_size, log=log, fitted_on=sd_fingerprint(args.sd))
    record = {"sd": str(Path(args.sd).resolve()), "prompts": prompts, "judge": str(Path(args.judge).resolve()),
              "n_per_prompt": args.n, "seed": args.seed, "guidance_scale": cfg, "n_train": res.n_train,
              "n_heldout": res.n_heldout, "heldout_accuracy": res.heldout_accuracy,
              "train_accuracy": res.train_accuracy, "label_shares": res.label_shares, "seconds": res.seconds}
    save_heads(res.heads, args.out, record)
    acc = res.heldout_accuracy or res.train_accuracy
    what = "held-out" if res.heldout_accuracy else "training"
    print(f"fitted {args.steps} heads on {res.n_train} generated images in {res.seconds:.1f} s; {what} balanced "
          f"accuracy first step {acc[0]:.3f}, last step {acc[-1]:.3f}; wrote {args.out}")
    return 0


def read_guided_prompts(args: argparse.Namespace, k: int) -> list[tuple[str, list[float]]]:
    """``(prompt, target shares)`` from --prompt / --prompts (a line may end in ``' | 0.3,0.7'``) and --target."""
    from fairdiff.evaluation.audit_inputs import read_prompts
    from fairdiff.methods.guidance import parse_target

    default = parse_target(args.target, k) if args.target is not None else [1 / k] * k
    items = []
    for line in read_prompts(args.prompts, args.prompt):
        prompt, sep, shares = line.rpartition(TARGET_SEP.strip())
        if not sep:
            items.append((line, default))
            continue
        if not prompt.strip():
            raise FairdiffError(f"--prompts: the line '{line}' has a target but no prompt")
        items.append((prompt.strip(), parse_target(shares.strip(), k)))
    return items


def cmd_sample(args: argparse.Namespace) -> int:
    from fairdiff.evaluation.audit_inputs import prompt_slug
    from fairdiff.models.heads import check_heads_model, load_heads, read_heads_record
    from fairdiff.sampling.sd_guided import GUIDED_KIND, guide_sd
    from fairdiff.utils.outputs import check_output_dir, replace_output_dir

    _check_numbers(args)
    if not math.isfinite(args.scale) or args.scale < 0:
        raise FairdiffError(f"--scale must be a finite number >= 0, got {args.scale}")
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise FairdiffError(f"--temperature must be a finite positive number, got {args.temperature}")
    sd = _check_sd(args.sd)
    if not Path(args.heads).is_dir():
        raise FairdiffError(f"--heads {args.heads}: no such folder (fit heads with 'fairdiff heads fit --sd')")
    heads = load_heads(args.heads)
    check_heads_model(heads, sd_fingerprint(args.sd), args.heads, args.sd, force=args.force)
    hc = heads.config
    if args.steps is not None and args.steps != hc.num_steps:
        raise FairdiffError(f"--steps {args.steps}: the heads {args.heads} were fitted for {hc.num_steps} DDIM "
                            f"steps; sample with --steps {hc.num_steps} (or fit heads for {args.steps})")
    if len(hc.attributes) != 1:
        raise FairdiffError(f"--heads {args.heads}: SD guidance steers one attribute, these heads predict "
                            f"{', '.join(hc.attributes)}")
    k = next(iter(hc.attributes.values()))
    items = read_guided_prompts(args, k)
    record = read_heads_record(args.heads)
    cfg = args.cfg_scale if args.cfg_scale is not None else float(record.get("guidance_scale", SD_FIT_CFG))
    inputs = [sd, Path(args.heads)]
    check_output_dir(args.out, GUIDED_KIND, overwrite=True, inputs=inputs, whole=True)
    pipe, size = _pipe(args)
    replace_output_dir(args.out, GUIDED_KIND, inputs)  # an earlier guided folder: no stale prompt left in it
    heads = heads.to(pipe.device)
    log = (lambda _m: None) if args.quiet else print
    guide_sd(pipe, heads, [(p, t, prompt_slug(p)) for p, t in items], args.out, n=args.n, scale=args.scale,
             mode=args.mode, temperature=args.temperature, loss=args.loss, steps=hc.num_steps, cfg_scale=cfg,
             size=size, seed=args.seed, batch_size=args.batch_size,
             info={"heads": str(Path(args.heads).resolve()), "sd": str(Path(args.sd).resolve())}, log=log)
    print(f"wrote {args.n} guided images for each of {len(items)} prompt(s) to {args.out} "
          f"(audit them with 'fairdiff audit --images {args.out}')")
    return 0
