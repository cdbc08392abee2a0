"""``fairdiff debias RUN --target 0.5,0.5 --method filter --out DIR`` (or ``--sd FOLDER --prompt P`` for one prompt
of a text-to-image model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.debias.finetune import METHODS as FINETUNE_METHODS
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("debias", help="debias a trained (base) run toward a target distribution of its groups")
    p.add_argument("run", metavar="RUN", nargs="?",
                   help="a trained run folder (e.g. a base from 'fairdiff base make'); or --sd FOLDER")
    p.add_argument("--sd", metavar="FOLDER", help="a local diffusers Stable Diffusion folder or SD LoRA run instead of "
                   "RUN: filter keeps its images of --prompt to the target (judged by --judge, --config); guide "
                   "steers them with --heads from 'fairdiff heads fit --sd', its scale found by the controller")
    p.add_argument("--prompt", help="--sd: the prompt whose images are kept to the target")
    p.add_argument("--cfg-scale", type=float, help="--sd: classifier-free guidance scale (default 7.5)")
    p.add_argument("--config", "-c", help="--sd: config YAML whose data section the judge is trained / calibrated "
                   "on (needed by --judge auto; gives the valid rate its real held-out images and the second judge)")
    p.add_argument("--target", required=True, help="target group shares in the run's group order, e.g. 0.5,0.5")
    p.add_argument("--method", default="filter", choices=["filter", "guide", "distill", *FINETUNE_METHODS],
                   help="filter: generate-and-filter (draw, judge with the validation judge, keep to quota); "
                   "guide: distribution guidance whose scale a controller finds on judged pilot batches; "
                   "distill: fine-tune the base on its own filtered images (OUT-data/), no sampling overhead; "
                   "reweight: fine-tune with group-reweighted loss (training labels, or with --judge clusters "
                   "the training images' spectral clusters); iw: fine-tune with density-ratio weights toward an "
                   "unlabeled --reference folder (no labels)")
    p.add_argument("--out", "-o", required=True, help="output folder (a new debias run folder)")
    p.add_argument("--n", type=int, help="images to keep (default eval.n_samples of the run; 100 with --sd)")
    p.add_argument("--judge", help="the judge that filters: 'auto' (the validation domain CNN), 'clusters' "
                   "(label-free: spectral clusters of the base's own images, largest first; 'clusters-kmeans': "
                   "k-means instead), .onnx or .pt; --method reweight: 'clusters' / 'clusters-kmeans' reweights "
                   "over clusters of the training images instead of their labels")
    p.add_argument("--seed", type=int, help="first sampling seed (default sample.seed of the run)")
    p.add_argument("--steps", type=int, help="denoising steps (default sample.steps of the run)")
    p.add_argument("--scheduler", choices=["ddim", "ddpm", "dpmpp", "unipc"], help="sampler (default the run's)")
    p.add_argument("--batch-size", type=int, help="images per sampling batch (default sample.batch_size)")
    p.add_argument("--max-draws", type=int, help="give up after drawing this many images (default 100 x n)")
    p.add_argument("--train-n", type=int, help="distill: filtered images to fine-tune on (default 2000)")
    p.add_argument("--rounds", type=int, choices=[1, 2, 3, 4], help="distill: 2 measures the first round's shares on a "
                   "pilot and distils the base again toward the target corrected by that miss; 3-4 go on from the "
                   "last two rounds' pilots (a secant per group) (default 1)")
    p.add_argument("--mix-real", action="store_true",
                   help="distill: fine-tune on the filtered images and the base's real training images together, "
                   "reweighted toward the target by group (the training labels and the filter's verdicts)")
    p.add_argument("--balance", choices=["weights", "resample"],
                   help="reweight / distill --mix-real: weight each image's loss toward the target (weights, the "
                   "default) or draw the batches at the target with a plain loss (resample)")
    p.add_argument("--train-steps", type=int, help="distill / reweight / iw: fine-tuning steps (default 400)")
    p.add_argument("--lr", type=float, help="distill / reweight / iw: fine-tuning learning rate (default 2e-4)")
    p.add_argument("--reference", help="iw: a folder of unlabeled images drawn at the target (a few hundred)")
    p.add_argument("--heads", help="guide: heads folder from 'fairdiff heads fit' (default: fitted here)")
    p.add_argument("--force", action="store_true",
                   help="guide: use --heads fitted on another model's weights (a warning instead of an error)")
    p.add_argument("--pilot-n", type=int, help="guide: images per pilot batch (default 256; 1024 with --reader "
                   "classifier or x0; 400 with --sd); distill --rounds 2+: images of each round's pilot (default 4096)")
    p.add_argument("--max-pilots", type=int, default=10, help="guide: pilot batches at most (default 10)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="guide: heads' softmax temperature (default 1: the controller aims at any target, unlike "
                        "'sample --heads', whose default 8 suits a uniform one)")
    p.add_argument("--mode", choices=["batch", "sample"], default="batch",
                   help="guide: batch (push the batch's share to the target) or sample (assign each image a group "
                   "in the target's proportions and guide it there)")
    p.add_argument("--min-t", type=int, help="guide --reader classifier or x0: guide only at timesteps >= this (the "
                   "base alone below it; default 0: every step)")
    p.add_argument("--space", choices=["h", "x"],
                   help="guide: where the loss gradient acts: h (edit the middle block's output, the default) or x "
                   "(add its gradient w.r.t. x_t to the model output, as classifier guidance does)")
    p.add_argument("--reader", choices=["heads", "classifier", "x0"], default="heads",
                   help="guide: what reads the group from the sample: heads on h-space (the default), a noise-aware "
                   "group classifier on x_t (classifier guidance toward the target's mixture; fitted here on the "
                   "training labels, or with --judge clusters on the base's own images and their clusters), or x0: "
                   "a clean-image classifier (a domain CNN that neither chooses nor scores) on the denoiser's "
                   "predicted clean image, its gradient through the denoiser (nothing fitted on noisy images)")
    p.add_argument("--classifier", help="guide --reader classifier: a classifier folder written by an earlier guide "
                   "run (its classifier/), instead of fitting one")
    p.add_argument("--classifier-steps", type=int, default=4000,
                   help="guide --reader classifier: fitting steps (default 4000)")
    p.add_argument("--eta", type=float, help="guide: DDIM noise, 0 deterministic to 1 ancestral (default 1 with "
                   "--reader classifier or x0, 0 with heads)")
    p.add_argument("--s0", type=float, help="guide: the controller's first non-zero scale (default 100 for "
                   "--space h, 1 for --space x)")
    p.add_argument("--no-pilot-cache", action="store_true",
                   help="guide: judge every pilot anew instead of reusing those judged before with the same model, "
                   "reader, judge, target and sampler ($FAIRDIFF_CACHE/pilots)")
    p.add_argument("--then-filter", action="store_true",
                   help="guide: draw at the scale found and keep images to the target's quotas with the validation "
                   "judge (the target exactly where the valid-rate floor stops guidance short; --max-draws applies)")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate the kept images")
    p.add_argument("--overwrite", action="store_true", help="replace a debias folder fairdiff wrote before")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_debias)


def _debias_sd(args: argparse.Namespace) -> int:
    """``debias --sd FOLDER --prompt P``: generate-and-filter, or guidance to the target, of one prompt of a
    text-to-image model."""
    from fairdiff.cli.eval_cmds import parse_target
    from fairdiff.config import load_config
    from fairdiff.debias.sd import filter_sd_prompt, guide_sd_prompt

    if args.run is not None:
        raise FairdiffError("give RUN or --sd FOLDER, not both")
    if args.method not in ("filter", "guide"):
        raise FairdiffError(f"--sd takes --method filter or guide (got {args.method}); fine-tuning an SD model "
                            "toward a target is 'fairdiff train --sd' (alignment)")
    guide_only = ("heads", "pilot_n", "s0")
    never = ("scheduler", "classifier", "eta", "space", "train_n", "train_steps", "lr", "reference", "rounds", "min_t",
             "balance")
    taken = [f"--{o.replace('_', '-')}" for o in never + (guide_only if args.method == "filter" else ())
             if getattr(args, o) is not None]
    taken += [f for f, v in (("--then-filter", args.then_filter and args.method == "filter"),
                             ("--no-pilot-cache", args.no_pilot_cache), ("--mode sample", args.mode != "batch"),
                             ("--mix-real", args.mix_real),
                             (f"--reader {args.reader}", args.reader != "heads")) if v]
    if taken:
        raise FairdiffError(f"{', '.join(taken)}: not an option of 'debias --sd --method {args.method}'")
    if args.config is not None and not Path(args.config).is_file():
        raise FairdiffError(f"--config {args.config}: no such file")
    if args.judge in ("clusters", "clusters-kmeans"):
        raise FairdiffError(f"--judge {args.judge} is for trained runs; with --sd give a judge file or --judge auto "
                            "with --config")
    data_cfg = eval_cfg = None
    if args.config is not None:
        cfg = load_config(args.config, [])
        data_cfg, eval_cfg = cfg.data, cfg.eval
    common = dict(prompt=args.prompt or "", n=args.n if args.n is not None else 100, judge=args.judge,
                  data_cfg=data_cfg, eval_cfg=eval_cfg, seed=args.seed if args.seed is not None else 0,
                  batch_size=args.batch_size or 8, max_draws=args.max_draws, overwrite=args.overwrite,
                  evaluate=not args.no_eval, progress=not args.quiet)
    if args.method == "guide":
        if args.steps is not None:
            raise FairdiffError("--steps: 'debias --sd --method guide' samples with the heads' own steps")
        rec = guide_sd_prompt(args.sd, args.out, parse_target(args.target), heads=args.heads,
                              cfg_scale=args.cfg_scale, pilot_n=args.pilot_n or 400, max_pilots=args.max_pilots,
                              s0=10.0 if args.s0 is None else args.s0, then_filter=args.then_filter,
                              force=args.force, **common)
        c = rec["controller"]
        print(f"guide: scale {c['scale']:g} after {len(c['pilots'])} pilots ({c['reason']}); kept {rec['kept']} of "
              f"{rec['drawn']} drawn images of '{rec['prompt']}'; folder {args.out}")
    else:
        rec = filter_sd_prompt(args.sd, args.out, parse_target(args.target),
                               steps=args.steps if args.steps is not None else 25,
                               cfg_scale=7.5 if args.cfg_scale is None else args.cfg_scale, **common)
        print(f"filter: kept {rec['kept']} of {rec['drawn']} drawn images of '{rec['prompt']}' "
              f"({rec['drawn_per_kept']:.2f} drawn per kept image, {rec['seconds_per_kept_image'] * 1000:.0f} ms "
              f"per kept image); folder {args.out}")
    m = rec.get("metrics")
    if m:
        print(f"valid rate {m['valid_rate']:.3f}, shares among valid {[round(x, 3) for x in m['valid_shares']]} "
              f"({'the test judge; the validation judge' if rec.get('validation_judge') else 'the judge that'} "
              f"{'steered' if args.method == 'guide' else 'kept'} them; see report.md)")
    return 0


def cmd_debias(args: argparse.Namespace) -> int:
    from fairdiff.cli.eval_cmds import parse_target
    from fairdiff.debias import debias_run

    for name in ("n", "steps", "batch_size", "max_draws", "train_n", "train_steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise FairdiffError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.seed is not None and args.seed < 0:
        raise FairdiffError(f"--seed must be >= 0, got {args.seed}")
    if args.sd is not None:
        return _debias_sd(args)
    if args.run is None:
        raise FairdiffError("give a trained RUN folder (or --sd FOLDER --prompt P for a text-to-image model)")
    if args.prompt is not None or args.cfg_scale is not None or args.config is not None:
        raise FairdiffError("--prompt, --cfg-scale and --config are options of 'debias --sd'")
    run = Path(args.run)
    if not run.is_dir():
        raise FairdiffError(f"no such run folder: {run}")
    if args.judge not in (None, "auto", "clusters", "clusters-kmeans") and not Path(args.judge).is_file():
        raise FairdiffError(f"--judge {args.judge}: no such file (use 'auto', 'clusters', 'clusters-kmeans', an .onnx "
                            "or a .pt file)")
    if args.lr is not None and not (args.lr > 0 and args.lr < 1):
        raise FairdiffError(f"--lr must lie in (0, 1), got {args.lr}")
    if args.method != "distill" and (args.train_n is not None or args.rounds is not None or args.mix_real):
        raise FairdiffError("--train-n, --rounds and --mix-real are options of --method distill")
    if args.balance is not None and args.method != "distill" and not _takes_option(args.method, "balance"):
        raise FairdiffError(f"--balance is not an option of --method {args.method} (it is one of --method distill "
                            "--mix-real and of the fine-tunes that weight by group, e.g. reweight)")
    multi_round = args.method == "distill" and (args.rounds or 1) > 1
    if args.pilot_n is not None and not (args.method == "guide" or multi_round):
        raise FairdiffError("--pilot-n is an option of --method guide and of --method distill --rounds 2 or more")
    if args.method != "distill" and args.method not in FINETUNE_METHODS and (args.train_steps is not None
                                                                             or args.lr is not None):
        raise FairdiffError("--train-steps and --lr are options of the fine-tuning methods (distill, reweight, iw)")
    common = dict(judge=args.judge, seed=args.seed, batch_size=args.batch_size, steps=args.steps,
                  scheduler=args.scheduler, max_draws=args.max_draws, overwrite=args.overwrite,
                  evaluate=not args.no_eval, progress=not args.quiet)
    target = parse_target(args.target)
    if args.method != "guide" and args.heads is not None:
        raise FairdiffError("--heads is an option of --method guide")
    if args.method != "guide" and (args.space is not None or args.s0 is not None or args.reader != "heads"
                                   or args.classifier is not None or args.eta is not None or args.no_pilot_cache
                                   or args.then_filter or args.min_t is not None):
        raise FairdiffError("--space, --reader, --classifier, --eta, --s0, --no-pilot-cache, --then-filter and "
                            "--min-t are options of --method guide")
    if args.classifier is not None and not Path(args.classifier).is_dir():
        raise FairdiffError(f"--classifier {args.classifier}: no such folder")
    if not args.temperature > 0:
        raise FairdiffError(f"--temperature must be positive, got {args.temperature}")
    if args.method in FINETUNE_METHODS:
        from fairdiff.debias.finetune import finetune_run

        from fairdiff.debias.clusters import cluster_method
        from fairdiff.methods.registry import get_method

        grouped = get_method(args.method).uses_groups  # reweight: its groups may be clusters (no label)
        for o in ("judge", "steps", "scheduler", "batch_size", "max_draws"):
            if getattr(args, o) is not None and not (o == "judge" and grouped and cluster_method(args.judge)):
                raise FairdiffError(f"--{o.replace('_', '-')} is not an option of --method {args.method}"
                                    + (f" ({args.method} takes --judge clusters / clusters-kmeans: label-free groups)"
                                       if o == "judge" and grouped else ""))
        rec = finetune_run(run, args.out, target, method=args.method, reference=args.reference, groups=args.judge,
                           balance=args.balance or "weights", train_steps=args.train_steps, lr=args.lr, n=args.n,
                           seed=args.seed, overwrite=args.overwrite, evaluate=not args.no_eval, progress=not args.quiet)
        print(f"{args.method}: fine-tuned {rec['train_steps']} steps in {rec['finetune_seconds']:.0f} s"
              f"{'' if rec['groups'] == 'labels' else ' on ' + rec['groups'] + ' clusters (no label)'}; run {args.out}")
        if rec.get("metrics"):
            from fairdiff.cli.eval_cmds import _summary

            print(_summary(rec["metrics"]))
        return 0
    if args.reference is not None:
        raise FairdiffError("--reference is an option of --method iw")
    if args.method == "guide":
        from fairdiff.debias.run import guide_run_to_target

        if args.heads is not None and not Path(args.heads).exists():
            raise FairdiffError(f"--heads {args.heads}: no such heads folder")
        for o in ("scheduler", "batch_size", *(() if args.then_filter else ("max_draws",))):
            if getattr(args, o) is not None:
                raise FairdiffError(f"--{o.replace('_', '-')} is not an option of --method guide"
                                    + (" (--max-draws goes with --then-filter)" if o == "max_draws" else ""))
        rec = guide_run_to_target(run, args.out, target, heads=args.heads, n=args.n, judge=args.judge,
                                  seed=args.seed, steps=args.steps, temperature=args.temperature,
                                  pilot_n=args.pilot_n, max_pilots=args.max_pilots, mode=args.mode,
                                  space=args.space or "h", s0=args.s0, reader=args.reader,
                                  classifier=args.classifier, classifier_steps=args.classifier_steps, eta=args.eta,
                                  overwrite=args.overwrite, force=args.force, pilot_cache=not args.no_pilot_cache,
                                  then_filter=args.then_filter, max_draws=args.max_draws, min_t=args.min_t or 0,
                                  evaluate=not args.no_eval, progress=not args.quiet)
        c = rec["controller"]
        hits = c["cache"]["hits"]
        print(f"guide: scale {c['scale']:g} after {len(c['pilots'])} pilots"
              f"{f' ({hits} judged before, from the pilot cache)' if hits else ''} ({c['reason']}); "
              f"{rec['seconds_per_image'] * 1000:.1f} ms per image (base {rec['base_seconds_per_image'] * 1000:.1f}); "
              f"folder {args.out}")
        if args.then_filter:
            print(f"then filter: kept {rec['kept']} of {rec['drawn']} drawn ({rec['drawn_per_kept']:.2f} drawn per "
                  f"kept image, {rec['seconds_per_kept_image'] * 1000:.1f} ms per kept image)")
    elif args.method == "distill":
        from fairdiff.debias import distill_run

        rec = distill_run(run, args.out, target, n=args.n, train_n=args.train_n, train_steps=args.train_steps,
                          lr=args.lr, rounds=args.rounds or 1, pilot_n=args.pilot_n, mix_real=args.mix_real,
                          balance=args.balance or "weights", **common)
        f = rec["filtered"]
        for r in range(1, rec.get("rounds", 1)):
            rr = rec[f"round{r}"]
            toward = rec["corrected_target"] if r + 1 == rec["rounds"] else rec[f"round{r + 1}"]["target"]
            print(f"distill round {r} ({rr['dir']}{', reused' if rr.get('reused') else ''}): shares "
                  f"{[round(x, 3) for x in rr['pilot_shares']]} on {rr['pilot_n']} pilot images; round {r + 1} "
                  f"toward {[round(x, 3) for x in toward]}")
        mixed = ", mixed with the real training images" if rec.get("mix_real") else ""
        print(f"distill: {rec['train_n']} filtered images ({f['drawn_per_kept']:.2f} drawn per kept image) in "
              f"{rec['data_dir']}{mixed}; fine-tuned {rec['train_steps']} steps in {rec['finetune_seconds']:.0f} s; "
              f"run {args.out}")
    else:
        rec = debias_run(run, args.out, target, method=args.method, n=args.n, **common)
        print(f"filter: kept {rec['kept']} of {rec['drawn']} drawn ({rec['drawn_per_kept']:.2f} drawn per kept "
              f"image, {rec['seconds_per_kept_image'] * 1000:.1f} ms per kept image); folder {args.out}")
    m = rec.get("metrics")
    if m:
        from fairdiff.cli.eval_cmds import _summary

        print(_summary(m))
    return 0


def _takes_option(method: str, option: str) -> bool:
    """Whether a fine-tune method of the registry has ``option`` among its own options."""
    import dataclasses

    from fairdiff.methods.registry import get_method

    if method not in FINETUNE_METHODS:
        return False
    return option in {f.name for f in dataclasses.fields(get_method(method).options)}
