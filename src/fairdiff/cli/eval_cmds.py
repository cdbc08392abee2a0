"""``fairdiff evaluate RUN_OR_SAMPLES`` and ``fairdiff compare RUN... --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.cli.aliases import flag, old_flag, set_func
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="fairness and quality metrics (with CIs) of a run or a samples folder")
    p.add_argument("path", metavar="RUN_OR_SAMPLES", help="run folder, samples folder or samples.npz")
    p.add_argument("--n", type=int, help="number of generated images (a run is sampled if it has fewer)")
    p.add_argument("--target", help="target group shares, e.g. 0.5,0.5 (default uniform)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (default eval.bootstrap = 1000)")
    p.add_argument("--judge", help="'auto' (cached domain CNN), an .onnx file or a TorchScript .pt file")
    old_flag(p, "--classifier", "--judge", "judge")
    p.add_argument("--seed", type=int, help="bootstrap seed (default eval.seed)")
    p.add_argument("--replicates", type=int, default=1, help="split the images into R replicates: mean +- std")
    p.add_argument("--out", "-o", help="output folder (default: the run / samples folder)")
    p.add_argument("--config", "-c", help="config YAML with the data section (for a plain samples folder)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    set_func(p, cmd_evaluate)

    p = sub.add_parser("compare", help="several evaluated runs in one table and one chart")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (evaluated first if needed)")
    p.add_argument("--out", "-o", required=True, help="output folder for compare.md / .csv / .png")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_compare)


def parse_target(text: str | None) -> list[float] | None:
    """'0.5,0.5' -> [0.5, 0.5]; length and sum are checked against the classifier later."""
    if text is None:
        return None
    from fairdiff.metrics.functional import check_shares

    try:
        return check_shares(text, what="--target").tolist()
    except ValueError as e:
        raise FairdiffError(str(e)) from None


EVAL_KIND = "eval"
# folders evaluate may add its files to: its own, a run, a samples folder (legacy: metrics.json + report.md)
EVAL_INTO = ("eval", "run", "samples", "compare", "debias")
EVAL_FILES = ("metrics.json", "report.md", "shares.png", "samples.png")
# how such folders looked before markers existed: named in the refusal's hint, never taken for fairdiff's own
EVAL_LEGACY = {"eval": ["metrics.json", "report.md"], "run": ["config.yaml", "manifest.json"],
               "samples": ["samples.npz"]}


def check_eval_out(out: Path, explicit: bool) -> bool:
    """Before any work: may ``out`` receive metrics.json / report.md / charts? Returns True when it is new.

    An explicit ``--out`` must be new, empty or a fairdiff (marked) eval / run / samples / compare / debias
    folder; the default one (the run or samples folder itself) is refused only when evaluate would overwrite files
    fairdiff did not write. A folder without the marker is not fairdiff's, even when its files look like it.
    """
    import os

    from fairdiff.cli.common import check_out
    from fairdiff.utils.outputs import OutputDirError, folder_kind, legacy_hint, read_marker

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        check_out(out, EVAL_KIND)
        return True
    if not out.is_dir():
        raise OutputDirError(f"output {out} exists and is not a folder")
    marker = read_marker(out)
    kind = marker["kind"] if marker else None
    if explicit and kind is not None and kind not in EVAL_INTO:  # (the default out is the input folder itself)
        raise OutputDirError(f"output folder {out} holds a fairdiff {kind} folder; choose another for evaluate")
    if kind is None:
        clash = [f for f in EVAL_FILES if (out / f).exists()]
        if explicit or clash:
            looks = folder_kind(out, EVAL_LEGACY)
            if looks is not None:
                raise OutputDirError(legacy_hint(out, looks))
            why = f"it holds {', '.join(clash)}" if clash else "it is not empty"
            raise OutputDirError(f"output folder {out} was not written by fairdiff and {why}; choose a new or "
                                 f"empty folder with --out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"output {out} is not writable (permission denied)")
    return False


def _num_groups(cfg) -> int:
    return len(cfg.data.groups)


def _check_target_len(target: list[float] | None, cfg) -> None:
    k = _num_groups(cfg)
    if target is not None and len(target) != k:
        raise FairdiffError(f"--target has {len(target)} values but there are {k} groups")


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
    c = m.get("copying")
    if c:
        line += f" copy-rate={c['copy_rate']:.3f} (real images {c['copy_rate_real']:.2f})"
    return line


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fairdiff.cli.common import mark_out
    from fairdiff.config import load_config
    from fairdiff.evaluation import evaluate_run, evaluate_samples

    path = Path(args.path)
    if not path.exists():
        raise FairdiffError(f"no such run or samples folder: {path}")
    target = parse_target(args.target)
    if args.n is not None and args.n < 2:
        raise FairdiffError(f"--n must be at least 2 (the bootstrap confidence interval needs 2 images), got {args.n}")
    if args.seed is not None and args.seed < 0:
        raise FairdiffError(f"--seed must be at least 0, got {args.seed}")
    if args.bootstrap is not None and args.bootstrap < 0:
        raise FairdiffError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.replicates < 1 or (args.n is not None and args.replicates > args.n):
        raise FairdiffError(f"--replicates must lie in [1, n], got {args.replicates}")
    if args.judge not in (None, "auto") and not Path(args.judge).is_file():
        raise FairdiffError(f"{flag(args, 'judge')} {args.judge}: no such file (use 'auto', an .onnx or a .pt file)")
    is_run = path.is_dir() and (path / "config.yaml").exists() and not args.config
    default_out = path if is_run else (path.parent if path.is_file() else path)
    out = Path(args.out) if args.out else default_out
    new_out = check_eval_out(out, explicit=args.out is not None)
    common = {"n": args.n, "classifier": args.judge, "target": target, "bootstrap": args.bootstrap,
              "out_dir": args.out, "seed": args.seed, "progress": not args.quiet, "replicates": args.replicates}
    if is_run:
        from fairdiff.runs import read_run_config

        _check_target_len(target, read_run_config(path))
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
        _check_target_len(target, cfg)
        m = evaluate_samples(path, cfg.data, cfg.eval, **common)
    if new_out:
        mark_out(out, EVAL_KIND)
    print(_summary(m))
    print(f"wrote {Path(m['out_dir']) / 'metrics.json'} and report.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fairdiff.cli.common import check_out, mark_out
    from fairdiff.evaluation import compare_runs

    for r in args.runs:
        if not Path(r).is_dir():
            raise FairdiffError(f"not a run folder: {r}")
    check_out(args.out, "compare", reuse=True, inputs=args.runs, legacy={"compare": ["compare.md"]})
    rows = compare_runs(args.runs, args.out, progress=not args.quiet)
    mark_out(args.out, "compare")
    for r in rows:
        print(f"{r['run']}: FD={r['fd_hard']:.4f} shares={r['shares']}")
    print(f"wrote {Path(args.out) / 'compare.md'}, compare.csv, compare.png")
    return 0
