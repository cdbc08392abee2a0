"""Benchmark: cheaper evaluation sampling (bf16 autocast, fewer DDIM steps) against fp32 / DDIM-20, side by side.

Samples the same seeds from one base with each setting, evaluates every set with the same judges, and prints the
speed ratio against the reference and whether strict FD, valid rate and the share of group 0 stay inside the
reference's 95 % CI. A setting may become the evaluation default only where all three do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eval_sampling.py [--base digits-01] [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SETTINGS = [("fp32-ddim20", "fp32", 20), ("bf16-ddim20", "bf16", 20), ("fp32-ddim10", "fp32", 10),
            ("bf16-ddim10", "bf16", 10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="digits-01", help="a shipped base's name")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the samples and metrics here (default: a temporary folder)")
    args = ap.parse_args()

    from fairdiff.bench.bases import install_shipped, shipped_root
    from fairdiff.evaluation import evaluate_samples
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample_run

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-eval-sampling-"))
    base = install_shipped(shipped_root() / args.base, work / "base")
    cfg = read_run_config(base)
    rows = []
    for name, precision, steps in SETTINGS:
        t0 = time.perf_counter()
        sample_run(base, args.n, out_dir=work / name, seed=args.seed, steps=steps, batch_size=250,
                   precision=precision, png=False, progress=False)
        secs = time.perf_counter() - t0
        m = evaluate_samples(work / name, cfg.data, cfg.eval, out_dir=work / name, progress=False)
        rows.append({"setting": name, "seconds": secs, "fd_strict": m["fd_strict"], "fd_ci": m["fd_strict_ci"],
                     "valid": m["valid_rate"], "valid_ci": m["valid_rate_ci"], "share0": m["valid_shares"][0],
                     "share0_ci": m["valid_shares_ci"][0]})
    ref = rows[0]
    print(f"base {args.base}, {args.n} images, seeds {args.seed}..{args.seed + args.n - 1}")
    print("| setting | s | speed vs fp32-ddim20 | strict FD | valid rate | share g0 | inside the reference CI |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        inside = (ref["fd_ci"][0] <= r["fd_strict"] <= ref["fd_ci"][1]
                  and ref["valid_ci"][0] <= r["valid"] <= ref["valid_ci"][1]
                  and ref["share0_ci"][0] <= r["share0"] <= ref["share0_ci"][1])
        print(f"| {r['setting']} | {r['seconds']:.1f} | {ref['seconds'] / r['seconds']:.2f}x | {r['fd_strict']:.3f} | "
              f"{r['valid']:.3f} | {r['share0']:.3f} | {'yes' if inside else 'no'} |")
    (work / "bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
