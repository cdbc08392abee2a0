"""Benchmark: evaluation sampling settings (bf16 autocast, fewer DDIM steps, DDIM's eta) against fp32 / DDIM-20.

Samples the same seeds from one base with each setting, evaluates every set with the same judges, and prints the
speed ratio against the reference and whether strict FD, valid rate and the share of group 0 stay inside the
reference's 95 % CI. A setting may become the evaluation default only where all three do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eval_sampling.py [--base digits-01] [--n 1000] \
        [--settings fp32-ddim20,fp32-ddim20-eta1] [--results docs/results/eval_sampling.csv]

``--results`` writes one row per (base, setting, n) into the CSV (replacing an earlier row with the same key).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

# name: (precision, DDIM steps, eta); the first one run is the reference
SETTINGS = {"fp32-ddim20": ("fp32", 20, 0.0), "bf16-ddim20": ("bf16", 20, 0.0), "fp32-ddim10": ("fp32", 10, 0.0),
            "bf16-ddim10": ("bf16", 10, 0.0), "fp32-ddim20-eta1": ("fp32", 20, 1.0),
            "fp32-ddim50-eta1": ("fp32", 50, 1.0)}
DEFAULT = "fp32-ddim20,bf16-ddim20,fp32-ddim10,bf16-ddim10"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="digits-01", help="a shipped base's name")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the samples and metrics here (default: a temporary folder)")
    ap.add_argument("--settings", default=DEFAULT, help=f"comma-separated, the first is the reference (known: "
                    f"{', '.join(SETTINGS)})")
    ap.add_argument("--results", type=Path, help="CSV to write the rows into")
    args = ap.parse_args()
    names = args.settings.split(",")
    unknown = [x for x in names if x not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(SETTINGS)})")

    from fairdiff.bench.bases import install_shipped, shipped_root
    from fairdiff.evaluation import evaluate_samples
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample_run

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-eval-sampling-"))
    base = install_shipped(shipped_root() / args.base, work / "base")
    cfg = read_run_config(base)
    rows = []
    for name in names:
        precision, steps, eta = SETTINGS[name]
        t0 = time.perf_counter()
        sample_run(base, args.n, out_dir=work / name, seed=args.seed, steps=steps, batch_size=250, eta=eta,
                   precision=precision, png=False, progress=False)
        secs = time.perf_counter() - t0
        m = evaluate_samples(work / name, cfg.data, cfg.eval, out_dir=work / name, progress=False)
        rows.append({"setting": name, "seconds": secs, "fd_strict": m["fd_strict"], "fd_ci": m["fd_strict_ci"],
                     "valid": m["valid_rate"], "valid_ci": m["valid_rate_ci"], "share0": m["valid_shares"][0],
                     "share0_ci": m["valid_shares_ci"][0], "precision": m.get("precision"),
                     "recall": m.get("recall"), "valid_j2": (m.get("judge2") or {}).get("valid_rate"),
                     "domain_fid": m.get("domain_fid")})
    ref = rows[0]
    for r in rows:  # a setting may become the default only where all three stay inside the reference's CIs
        r["inside"] = (ref["fd_ci"][0] <= r["fd_strict"] <= ref["fd_ci"][1]
                       and ref["valid_ci"][0] <= r["valid"] <= ref["valid_ci"][1]
                       and ref["share0_ci"][0] <= r["share0"] <= ref["share0_ci"][1])
    print(f"base {args.base}, {args.n} images, seeds {args.seed}..{args.seed + args.n - 1}")
    print("| setting | s | speed vs fp32-ddim20 | strict FD | valid rate | share g0 | inside the reference CI |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['seconds']:.1f} | {ref['seconds'] / r['seconds']:.2f}x | {r['fd_strict']:.3f} | "
              f"{r['valid']:.3f} | {r['share0']:.3f} | {'yes' if r['inside'] else 'no'} |")
    (work / "bench.json").write_text(json.dumps(rows, indent=1))
    if args.results:
        _write_results(args.results, args.base, args.n, rows, ref)


FIELDS = ["base", "setting", "n", "seconds", "speedup", "fd_strict", "valid_rate", "share_0", "agrees_with_reference",
          "precision", "recall", "valid_rate_j2", "domain_fid"]


def _write_results(path: Path, base: str, n: int, rows: list[dict], ref: dict) -> None:
    """One row per (base, setting, n) in ``path``, replacing an earlier row with the same key."""
    from fairdiff.bench.published import read_rows, write_rows

    def rnd(v, digits):
        return None if v is None else round(v, digits)

    new = [{"base": base, "setting": r["setting"], "n": n, "seconds": round(r["seconds"], 1),
            "speedup": round(ref["seconds"] / r["seconds"], 2), "fd_strict": round(r["fd_strict"], 4),
            "valid_rate": round(r["valid"], 4), "share_0": round(r["share0"], 4),
            "agrees_with_reference": "yes" if r["inside"] else "no", "precision": r["precision"],
            "recall": rnd(r["recall"], 4), "valid_rate_j2": r["valid_j2"], "domain_fid": rnd(r["domain_fid"], 2)}
           for r in rows]
    keys = {(x["base"], x["setting"], str(x["n"])) for x in new}
    old = [x for x in read_rows(path) if (x.get("base"), x.get("setting"), str(x.get("n"))) not in keys]
    write_rows(path, old + new, FIELDS)


if __name__ == "__main__":
    main()
