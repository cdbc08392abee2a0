"""``fairdiff demo``, ``fairdiff sweep`` and ``fairdiff bench``: resumable matrices of train -> sample -> evaluate."""

from __future__ import annotations

import argparse
import math
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from fairdiff.errors import FairdiffError


def _floats(text: str, what: str) -> list[float]:
    """Comma-separated finite numbers, at least one, no duplicates (refused before any work)."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FairdiffError(f"{what}: expected comma-separated numbers, got '{text}'") from None
    if not vals:
        raise FairdiffError(f"{what} is empty; give at least one number, e.g. 0,0.05")
    if not all(math.isfinite(v) for v in vals):
        raise FairdiffError(f"{what}: numbers must be finite, got '{text}'")
    dup = [v for i, v in enumerate(vals) if v in vals[:i]]
    if dup:
        raise FairdiffError(f"{what} lists {dup[0]:g} more than once; give distinct values")
    return vals


def _ints(text: str, what: str) -> list[int]:
    """Comma-separated integers, at least one, no duplicates (refused before any work)."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FairdiffError(f"{what}: expected comma-separated integers, got '{text}'") from None
    if not vals:
        raise FairdiffError(f"{what} is empty; give at least one integer, e.g. 0,1")
    dup = [v for i, v in enumerate(vals) if v in vals[:i]]
    if dup:
        raise FairdiffError(f"{what} lists {dup[0]} more than once; give distinct values")
    return vals


def register(sub) -> None:
    p = sub.add_parser("demo", help="a 4:1 biased digits base debiased three ways (DDM, reweighting, filter)")
    p.add_argument("--out", "-o", default="runs/demo")
    p.add_argument("--overwrite", action="store_true", help="start again instead of keeping finished cells")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every cell")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="DDM alpha x seed grid (resumable), table + fairness-vs-quality plot")
    p.add_argument("--config", "-c", help="base YAML config")
    p.add_argument("--alphas", default="0,0.01,0.05,0.1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--reweight", action="store_true", help="add a reweighting row")
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench", help="methods x bias settings x seeds from a bench config (resumable), tables + plots",
                       description="Run every cell of a bench config (docs/bench.md): train, sample, evaluate. "
                       "Finished cells are kept and an interrupted cell resumes, so run the same command again "
                       "to continue.")
    p.add_argument("config", help="bench YAML file, e.g. configs/bench/mnist-pairs.yaml")
    p.add_argument("--out", "-o", help="output folder (default: runs/bench/<name>)")
    p.add_argument("--only", metavar="GLOB", help="run only cells whose name (setting/method-sSEED), setting or "
                   "method matches one of these comma-separated globs, plus the cells they need")
    p.add_argument("--seeds", help="comma-separated training seeds instead of the config's")
    p.add_argument("--quiet", "-q", action="store_true", help="one line per cell, no progress bars")
    p.add_argument("--dry-run", action="store_true", help="list the cells with their resolved overrides and exit")
    p.add_argument("--jobs", "-j", default="1", metavar="N",
                   help="run N cells at once, each in its own process (CPU: cores/N threads each; GPUs: one each)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based; for array jobs of a cluster "
                   "scheduler): cells are dealt out by setting and seed, and every shard writes the same table")
    p.set_defaults(func=cmd_bench)


def cmd_demo(args: argparse.Namespace) -> int:
    from fairdiff.bench.demo import run_demo

    from fairdiff.cli.common import check_out, mark_out
    from fairdiff.config import load_config

    load_config(None, args.overrides)  # fail early on a bad override
    check_out(args.out, "demo", overwrite=args.overwrite, reuse=not args.overwrite, legacy={"demo": ["cells"]},
              whole=args.overwrite)
    t0 = time.time()
    table = run_demo(args.out, overrides=args.overrides, overwrite=args.overwrite, quiet=args.quiet)
    mark_out(args.out, "demo")
    print(table)
    print(f"demo finished in {time.time() - t0:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fairdiff.bench.matrix import run_matrix, sweep_cells
    from fairdiff.config import load_config

    from fairdiff.cli.common import check_out, mark_out

    alphas, seeds = _floats(args.alphas, "--alphas"), _ints(args.seeds, "--seeds")
    if any(a < 0 for a in alphas):
        raise FairdiffError(f"--alphas must be >= 0 (0 is the baseline loss), got '{args.alphas}'")
    load_config(args.config, args.overrides)  # fail early on a bad config
    cells = sweep_cells(alphas, seeds, args.overrides, include_reweight=args.reweight)
    check_out(args.out, "sweep", reuse=True, legacy={"sweep": ["cells"]})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    mark_out(args.out, "sweep")  # (run_matrix checks every cell's config and refuses stale cells before work)
    run_matrix(args.config, cells, args.out, quiet=args.quiet, title="DDM alpha sweep")
    print((Path(args.out) / "table.md").read_text())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fairdiff.bench.config import check_cells, expand_cells, load_bench_config, select_cells
    from fairdiff.bench.records import reevaluable, stale_reason
    from fairdiff.bench.runner import cell_extra, check_cells_fresh, run_bench
    from fairdiff.cli.common import check_out, mark_out
    from fairdiff.config import load_config

    cfg = load_bench_config(args.config)
    out = Path(args.out or Path("runs") / "bench" / cfg.name)
    seeds = _ints(args.seeds, "--seeds") if args.seeds is not None else None
    all_cells = expand_cells(cfg, out, seeds)
    check_cells(cfg, all_cells)
    cells = select_cells(all_cells, args.only)
    jobs = _ints(args.jobs, "--jobs")
    if len(jobs) != 1 or jobs[0] < 1:
        raise FairdiffError(f"--jobs: expected a positive whole number, got {args.jobs!r}")
    if args.shard is not None:
        from fairdiff.bench.runner import shard_cells

        parts = args.shard.split("/")
        try:
            index, count = (int(x) for x in parts)
        except ValueError:
            raise FairdiffError(f"--shard: expected I/N such as 0/4, got {args.shard!r}") from None
        if count < 1 or not 0 <= index < count:
            raise FairdiffError(f"--shard: expected I/N with 0 <= I < N, got {args.shard!r}")
        cells = shard_cells(cells, index, count)
    if args.dry_run:
        print(f"bench {cfg.name}: {len(cells)} of {len(all_cells)} cells into {out} (base: {cfg.base or 'defaults'})")
        for c in cells:
            kind = f"guidance of {c.after}" if c.guidance else (f"starts from {c.after}" if c.after else "trains")
            ccfg = load_config(cfg.base, c.overrides)
            stale = stale_reason(out / "cells" / c.name, ccfg, cell_extra(c))
            again = reevaluable(out / "cells" / c.name, ccfg, cell_extra(c), guided=c.guidance is not None)
            if again:
                stale = None
            state = f" [keeps its model, samples / evaluates again: {', '.join(again)} changed]" if again else (
                f" [ran with another config: {stale}]") if stale else (
                " [finished]" if (out / "cells" / c.name / "metrics.json").exists() else "")
            print(f"{c.name}  ({kind}){state}")
            print("    " + " ".join(shlex.quote(o) for o in c.overrides))
            if c.guidance:
                print(f"    guidance: {asdict(c.guidance)}")
        return 0
    check_out(out, "bench", reuse=True, legacy={"bench": ["cells"]})
    check_cells_fresh(cfg.base, cells, out, print)  # one line before any work, never a reused stale cell
    out.mkdir(parents=True, exist_ok=True)
    mark_out(out, "bench")
    t0 = time.time()
    try:
        run_bench(cfg, cells, out, all_cells=all_cells, quiet=args.quiet, jobs=jobs[0])
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: every cell was stopped (training cells saved a checkpoint)
        stop = KeyboardInterrupt(f"bench interrupted: run the same command again to continue (finished cells in "
                                 f"{out} are kept; cells in training saved a checkpoint)")
        stop.signum = getattr(e, "signum", 2)  # (the CLI prints this one line and exits 128 + signum)
        raise stop from None
    print((out / "results.md").read_text())
    print(f"bench {cfg.name} finished in {time.time() - t0:.0f} s; results: {out / 'results.md'}")
    return 0
