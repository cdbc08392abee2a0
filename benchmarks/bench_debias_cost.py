"""What each sampling-time debiasing method costs per kept image, measured side by side in one process.

The results tables' "s / image" columns come from protocol runs timed whenever they ran, often beside other jobs,
so their ratios to the base mix machine load into the cost. This script draws ``--n`` images of each method from
one base, one after the other in one process, and prints each method's seconds per kept image and its ratio to the
base's, with the base timed first and last (their spread is the drift of the machine during the run).

One-time costs are reported apart, not in the per-image figure: the classifier or heads fit and the controller's
pilots (cached in ~/.cache/fairdiff/pilots, so a method the protocol already ran on this base and target starts
drawing at once; ``pilot_s`` says what the pilots cost this time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_debias_cost.py BASE --setting mnist-01 --target 0.5,0.5 \\
        --n 512 --methods filter,guide,guide-clf,guide-clf-filter-st50 --classifier runs/protocol/mnist-01/classifier \\
        --out runs/cost/mnist-01 --results docs/results/debias_cost.csv

Methods: ``filter``, ``guide`` (h-space heads), ``guide-clf`` (noise-aware classifier; ``--classifier`` reuses a
fitted one), each with ``-filter`` (``--then-filter``) and / or ``-stN`` (N denoising steps). Rows: one per method
(and one per base timing), written with the other results files' helpers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

FIELDS = ["setting", "method", "target_0", "n", "steps", "seconds_per_kept_image", "cost_x_base", "drawn_per_kept",
          "seconds_per_drawn_image", "drawn_cost_x_base", "fit_s", "pilot_s", "threads", "note"]
METHOD = re.compile(r"(filter|guide(-clf)?(-filter)?)(-st(\d+))?")
SEED = 7_000_000  # drawn images' seeds: apart from the protocol's (seed * 1e6) and the pilots'


def _base_seconds(base: Path, out: Path, n: int, steps: int) -> float:
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample_run

    cfg = read_run_config(base)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    sample_run(base, n, out_dir=out, seed=SEED, batch_size=cfg.sample.batch_size, steps=steps,
               scheduler=cfg.sample.scheduler, eta=cfg.sample.eta, png=False, progress=False)
    return (time.perf_counter() - t) / n


def run_method(base: Path, method: str, target: list[float], n: int, out: Path, classifier: Path | None) -> dict:
    from fairdiff.debias.run import debias_run, guide_run_to_target

    m = METHOD.fullmatch(method)
    if m is None:
        raise SystemExit(f"unknown method {method} (filter, guide, guide-clf, each with -filter and / or -stN)")
    steps = int(m.group(5)) if m.group(5) else None
    folder = out / method
    kw = {"n": n, "seed": SEED, "overwrite": folder.exists(), "evaluate": False, "progress": False}
    if steps:
        kw["steps"] = steps
    if m.group(1) == "filter":
        rec = debias_run(base, folder, target, method="filter", **kw)
        fit_s = 0.0
    else:
        gkw = {"then_filter": bool(m.group(3))}
        if m.group(2):
            gkw["reader"] = "classifier"
            if classifier is not None:
                gkw["classifier"] = classifier
        rec = guide_run_to_target(base, folder, target, **kw, **gkw)
        reader = rec.get(rec.get("reader", "heads")) or {}
        fit_s = rec.get("heads_seconds", 0.0) if reader.get("fitted") else 0.0
    return {"steps": rec.get("steps"), "seconds_per_kept_image": rec["seconds_per_kept_image"],
            "drawn_per_kept": rec.get("drawn_per_kept", 1.0),
            "seconds_per_drawn_image": rec.get("seconds_per_drawn_image", rec["seconds_per_kept_image"]),
            "fit_s": round(float(fit_s), 1),
            "pilot_s": round(float(rec.get("pilot_seconds", 0.0)), 1)}


def main() -> None:
    import os

    from fairdiff.bench.published import read_rows, write_rows
    from fairdiff.runs import read_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--setting", required=True)
    ap.add_argument("--target", required=True, help="e.g. 0.5,0.5")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--methods", default="filter,guide-clf")
    ap.add_argument("--classifier", type=Path, help="a fitted noise-aware classifier for the guide-clf forms")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, help="add the rows to this CSV")
    args = ap.parse_args()
    target = [float(x) for x in args.target.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if METHOD.fullmatch(m) is None:
            raise SystemExit(f"unknown method {m} (filter, guide, guide-clf, each with -filter and / or -stN)")
    steps_cfg = int(read_run_config(args.base).sample.steps)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    rows = []

    def row(method: str, **v) -> dict:
        r = {"setting": args.setting, "method": method, "target_0": target[0], "n": args.n, "threads": threads,
             "note": "", **v}
        rows.append(r)
        print(" ".join(f"{k}={r.get(k)}" for k in ("method", "steps", "seconds_per_kept_image", "cost_x_base",
                                                    "drawn_per_kept", "fit_s", "pilot_s")), flush=True)
        return r

    base_steps = sorted({steps_cfg, *(int(METHOD.fullmatch(m).group(5) or steps_cfg) for m in methods)})
    first = {s: _base_seconds(args.base, args.out / f"base-st{s}", args.n, s) for s in base_steps}
    measured = [(m, run_method(args.base, m, target, args.n, args.out, args.classifier)) for m in methods]
    last = {s: _base_seconds(args.base, args.out / f"base-st{s}", args.n, s) for s in base_steps}
    ref = (first[steps_cfg] + last[steps_cfg]) / 2  # the base as its user samples it (its config's steps)
    for s in base_steps:
        drift = abs(first[s] - last[s]) / max(first[s], last[s])
        row("base" if s == steps_cfg else f"base-st{s}", steps=s,
            seconds_per_kept_image=round((first[s] + last[s]) / 2, 5),
            cost_x_base=round((first[s] + last[s]) / 2 / ref, 2), drawn_per_kept=1.0,
            seconds_per_drawn_image=round((first[s] + last[s]) / 2, 5),
            drawn_cost_x_base=round((first[s] + last[s]) / 2 / ref, 2), fit_s=0.0, pilot_s=0.0,
            note=f"timed first and last: {first[s]:.5f} / {last[s]:.5f} s (drift {drift:.0%})")
    for m, v in measured:
        row(m, **v, cost_x_base=round(v["seconds_per_kept_image"] / ref, 2),
            drawn_cost_x_base=round(v["seconds_per_drawn_image"] / ref, 2))
    if args.results is not None:  # a rerun replaces the rows of the same setting, method, target and n
        key = ("setting", "method", "target_0", "n")
        new = {tuple(str(r[k]) for k in key) for r in rows}
        write_rows(args.results, [r for r in read_rows(args.results) if tuple(r[k] for k in key) not in new] + rows,
                   FIELDS)


if __name__ == "__main__":
    main()
