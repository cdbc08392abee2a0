"""``fairdiff base make | curve | ship | list``: pretrained biased bases (see fairdiff.bench.bases)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("base", help="pretrained biased bases: make (cached / shipped / trained), curve, ship, list")
    bsub = p.add_subparsers(dest="base_command", metavar="ACTION", parser_class=type(p))
    m = bsub.add_parser("make", help="the base for a config: cached, installed from a shipped base, or trained")
    m.add_argument("-c", "--config", required=True, help="the base's YAML config (e.g. configs/bases/mnist-01.yaml)")
    m.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=3000")
    m.add_argument("--out", "-o", help="folder (default: $FAIRDIFF_CACHE/bases/<name>-<recipe key>)")
    m.add_argument("--train", action="store_true", help="train even when a shipped base has the same recipe")
    m.add_argument("--no-eval", action="store_true", help="do not evaluate the base")
    m.add_argument("--quiet", "-q", action="store_true")
    m.set_defaults(func=cmd_make)
    c = bsub.add_parser("curve", help="learning curve: evaluate the EMA weights of every checkpoint of a run")
    c.add_argument("run", metavar="RUN")
    c.add_argument("--out", "-o", help="folder (default RUN/curve)")
    c.add_argument("--n", type=int, help="images per checkpoint (default eval.n_samples)")
    c.add_argument("--quiet", "-q", action="store_true")
    c.set_defaults(func=cmd_curve)
    s = bsub.add_parser("ship", help="write a trained run as a shipped base (fp16, hashes, recipe)")
    s.add_argument("run", metavar="RUN")
    s.add_argument("name", help="the shipped base's name, e.g. mnist-01")
    s.add_argument("--dest", help="folder (default: the package's shipped_bases/NAME)")
    s.add_argument("--no-eval", action="store_true", help="do not evaluate the shipped (fp16) weights")
    s.add_argument("--step", type=int, help="ship checkpoint-STEP's EMA weights as a STEP-step recipe "
                   "(chosen from the learning curve; constant learning-rate schedules only)")
    s.set_defaults(func=cmd_ship)
    ls = bsub.add_parser("list", help="the shipped bases and their recipes")
    ls.set_defaults(func=cmd_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_make(args: argparse.Namespace) -> int:
    from fairdiff.bench.bases import make_base

    if not Path(args.config).is_file():
        raise FairdiffError(f"no such config file: {args.config}")
    folder = make_base(args.config, args.overrides, out=args.out, evaluate=not args.no_eval,
                       use_shipped=not args.train, quiet=args.quiet)
    print(f"base ready: {folder}")
    if (folder / "metrics.json").exists():
        import json

        from fairdiff.cli.eval_cmds import _summary

        print(_summary(json.loads((folder / "metrics.json").read_text())))
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from fairdiff.bench.bases import learning_curve

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FairdiffError(f"{run} is not a fairdiff run (no config.yaml)")
    if args.n is not None and args.n < 2:
        raise FairdiffError(f"--n must be at least 2, got {args.n}")
    rows = learning_curve(run, args.out or run / "curve", n=args.n, quiet=args.quiet)
    if not rows:
        raise FairdiffError(f"{run} holds no checkpoints (train with train.checkpoint_every and a larger "
                            f"train.checkpoint_total_limit to keep them)")
    print(f"{len(rows)} checkpoints evaluated; {Path(args.out or run / 'curve') / 'curve.csv'}")
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from fairdiff.bench.bases import ship_base

    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise FairdiffError(f"base name must be letters, digits, '-' or '_', got '{args.name}'")
    import tempfile

    run = args.run
    with tempfile.TemporaryDirectory() as tmp:
        if args.step is not None:
            from fairdiff.bench.bases import truncate_run

            run = truncate_run(args.run, args.step, Path(tmp) / "run")
        dest = ship_base(run, args.name, args.dest)
    print(f"shipped: {dest}")
    if not args.no_eval:
        from fairdiff.bench.bases import evaluate_shipped

        with tempfile.TemporaryDirectory() as work:
            h = evaluate_shipped(dest, work, quiet=False)
        print(f"fp16 weights: valid rate {h['valid_rate']:.3f} (judge 2 {h['valid_rate_j2']:.3f}), precision "
              f"{h['precision']:.3f}, recall {h['recall']:.3f}, strict FD {h['fd_strict']:.3f}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fairdiff.bench.bases import list_shipped

    for b in list_shipped():
        r = b.get("metrics") or {}
        print(f"{b['name']}: recipe {b['key']}, {b['steps']} steps x {b['batch_size']}, "
              f"{b['train_seconds']:.0f} s; valid rate {r.get('valid_rate', float('nan')):.3f}")
    return 0
