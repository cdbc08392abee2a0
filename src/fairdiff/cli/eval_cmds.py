"""``fairdiff evaluate RUN_OR_SAMPLES`` and ``fairdiff compare RUN... --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="fairness and quality metrics (with CIs) of a run or a samples folder")
    p.add_argument("path", metavar="RUN_OR_SAMPLES", help="run folder, samples folder or samples.npz")
    p.add_argument("--n", type=int, help="number of generated images (a run is sampled if it has fewer)")
    p.add_argument("--target", help="target group shares, e.g. 0.5,0.5 (default uniform)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (default eval.bootstrap = 1000)")
    p.add_argument("--classifier", help="'auto' (cached domain CNN), an .onnx file or a TorchScript .pt file")
    p.add_argument("--seed", type=int, help="bootstrap seed (default eval.seed)")
    p.add_argument("--replicates", type=int, default=1, help="split the images into R replicates: mean +- std")
    p.add_argument("--out", "-o", help="output folder (default: the run / samples folder)")
    p.add_argument("--config", "-c", help="config YAML with the data section (for a plain samples folder)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="several evaluated runs in one table and one chart")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (evaluated first if needed)")
    p.add_argument("--out", "-o", required=True, help="output folder for compare.md / .csv / .png")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_compare)


def parse_target(text: str | None) -> list[float] | None:
    """'0.5,0.5' -> [0.5, 0.5]; length and sum are checked against the classifier later."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").strip("[]").split(",") if v != ""]
    except ValueError:
        raise FairdiffError(f"--target must be comma-separated numbers like 0.5,0.5, got '{text}'") from None
    if not vals:
        raise FairdiffError("--target is empty")
    return vals


def _summary(m: dict) -> str:
    ci = m.get("fd_hard_ci") or [float("nan"), float("nan")]
    shares = ", ".join(f"{s:.3f}" for s in m["shares"])
    acc = m["classifier"].get("accuracy")
    sci = m.get("fd_strict_ci") or [float("nan")] * 2
    line = (f"N={m['n']} strictFD={m['fd_strict']:.4f} [{sci[0]:.4f}, {sci[1]:.4f}] valid={m['valid_rate']:.3f} "
            if m.get("fd_strict") is not None else "")
    line += (f"forced: shares=[{shares}] FD={m['fd_hard']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] "
            f"KL={m['kl']:.4f} SPD={m['spd']:+.4f}")
    if m.get("domain_fid") is not None:
        line += f" domainFID={m['domain_fid']:.3f} P={m['precision']:.3f} R={m['recall']:.3f}"
    line += f" (classifier {m['classifier']['name']}, acc {acc:.3f})" if acc is not None else ""
    return line


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fairdiff.config import load_config
    from fairdiff.evaluation import evaluate_run, evaluate_samples

    path = Path(args.path)
    if not path.exists():
        raise FairdiffError(f"no such run or samples folder: {path}")
    target = parse_target(args.target)
    if args.n is not None and args.n < 1:
        raise FairdiffError(f"--n must be at least 1, got {args.n}")
    if args.bootstrap is not None and args.bootstrap < 0:
        raise FairdiffError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    common = {"n": args.n, "classifier": args.classifier, "target": target, "bootstrap": args.bootstrap,
              "out_dir": args.out, "seed": args.seed, "progress": not args.quiet, "replicates": args.replicates}
    if path.is_dir() and (path / "config.yaml").exists() and not args.config:
        m = evaluate_run(path, **common)
    else:
        cfg_path = args.config
        if cfg_path is None:
            # a samples folder inside a run: use the run's config
            for cand in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
                if cand.exists():
                    cfg_path = cand
                    break
        if cfg_path is None:
            raise FairdiffError(f"{path} is not a run folder; pass --config with the data section of the samples")
        cfg = load_config(cfg_path)
        m = evaluate_samples(path, cfg.data, cfg.eval, **common)
    print(_summary(m))
    print(f"wrote {Path(m['out_dir']) / 'metrics.json'} and report.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fairdiff.evaluation import compare_runs

    for r in args.runs:
        if not Path(r).is_dir():
            raise FairdiffError(f"not a run folder: {r}")
    rows = compare_runs(args.runs, args.out, progress=not args.quiet)
    for r in rows:
        print(f"{r['run']}: FD={r['fd_hard']:.4f} shares={r['shares']}")
    print(f"wrote {Path(args.out) / 'compare.md'}, compare.csv, compare.png")
    return 0
