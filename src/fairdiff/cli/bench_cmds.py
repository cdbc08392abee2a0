"""``fairdiff demo`` and ``fairdiff sweep``: resumable matrices of train -> sample -> evaluate."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from fairdiff.errors import FairdiffError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FairdiffError(f"expected comma-separated numbers, got '{text}'") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FairdiffError(f"expected comma-separated integers, got '{text}'") from None


def register(sub) -> None:
    p = sub.add_parser("demo", help="baseline vs DDM vs reweighting on 4:1 biased digits (CPU, minutes)")
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


def demo_config_path() -> Path:
    return Path(str(resources.files("fairdiff") / "configs" / "demo.yaml"))


def cmd_demo(args: argparse.Namespace) -> int:
    from fairdiff.bench.demo import run_demo

    t0 = time.time()
    table = run_demo(args.out, overrides=args.overrides, overwrite=args.overwrite, quiet=args.quiet)
    print(table)
    print(f"demo finished in {time.time() - t0:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fairdiff.bench.matrix import run_matrix, sweep_cells
    from fairdiff.config import load_config

    load_config(args.config, args.overrides)  # fail early on a bad config
    cells = sweep_cells(_floats(args.alphas), _ints(args.seeds), args.overrides, include_reweight=args.reweight)
    run_matrix(args.config, cells, args.out, quiet=args.quiet, title="DDM alpha sweep")
    print((Path(args.out) / "table.md").read_text())
    return 0
