"""Which second-round corrector for ``distill --rounds 2``, read from validation-judge pilots only.

``distill --rounds 2`` measures the first round's shares ``s1`` on a pilot (validation judge, 4096 images from
PILOT_SEED) and distils the base again toward ``t2 = 2 t - s1``: it assumes the second round misses by as much as
the first, in share units. A corrector on the log scale (``t2`` proportional to ``t**2 / s1``; for two groups,
``logit t2 = logit t - (logit s1 - logit t)``) assumes the miss is a constant factor on each group's odds instead.
For finished two-round folders this script draws the *second* round's model on the same pilot seeds, judges them
by the same validation judge, and prints per group what each assumption predicted for that pilot from ``s1`` and the
``t2`` actually used:

    linear:   s2 = t2 + (s1 - t)
    ratio:    s2 proportional to t2 * s1 / t   (renormalised over the groups)

The test judge never enters: a corrector chosen from these rows is chosen on the validation judge, as the protocol
asks. Labelled (judge) folders only; label-free ones (``--judge clusters``) are skipped.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/corrector_check.py runs/protocol/mnist-01/distill2-mix-t0.3-0.7-s* \\
        --csv docs/results/corrector.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

FIELDS = ["setting", "folder", "group", "target", "s1", "t2", "s2", "pred_linear", "pred_ratio", "pilot_n",
          "valid_rate"]


def predictions(t: np.ndarray, s1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the linear and the ratio assumption predict for the second round's shares."""
    linear = t2 + (s1 - t)
    ratio = t2 * s1 / t
    return linear, ratio / ratio.sum()


def pilot_shares(folder: Path, n: int) -> tuple[np.ndarray, float]:
    """The second-round model's shares among valid images and its valid rate on ``n`` pilot images (seeds from
    PILOT_SEED, the first round's pilot seeds), judged by the validation judge."""
    from fairdiff.debias.run import _load_checked_judge, _verdict_fn, draw_pilot
    from fairdiff.metrics import OUTSIDE
    from fairdiff.runs import read_run_config

    cfg = read_run_config(folder)
    k = len(cfg.data.groups)
    verdicts = _verdict_fn(_load_checked_judge(None, cfg, k, False), cfg.data)
    v = verdicts(draw_pilot(folder, n, cfg=cfg))
    valid = v != OUTSIDE
    return np.bincount(v[valid], minlength=k) / max(int(valid.sum()), 1), float(valid.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="finished distill --rounds 2 folders")
    ap.add_argument("--csv", type=Path, help="append the rows here (one per folder and group)")
    args = ap.parse_args()
    for folder in args.folders:
        try:
            rec = json.loads((folder / "debias.json").read_text())
        except (OSError, ValueError):
            print(f"{folder}: no debias.json, skipped")
            continue
        judged = rec.get("filtered", {}).get("judge", {}) or {}
        if rec.get("rounds") != 2 or judged.get("kind") == "clusters (label-free)":
            print(f"{folder}: not a labelled two-round distill, skipped")
            continue
        t, s1, t2 = (np.asarray(x, dtype=float) for x in
                     (rec["target"], rec["round1"]["pilot_shares"], rec["corrected_target"]))
        n = int(rec["round1"]["pilot_n"])
        t0 = time.perf_counter()
        s2, valid = pilot_shares(folder, n)
        linear, ratio = predictions(t, s1, t2)
        print(f"{folder.name}: t {t.round(3).tolist()} s1 {s1.round(3).tolist()} t2 {t2.round(3).tolist()} -> s2 "
              f"{s2.round(3).tolist()} (valid {valid:.3f}); predicted linear {linear.round(3).tolist()}, ratio "
              f"{ratio.round(3).tolist()} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.csv:
            new = not args.csv.is_file()
            with open(args.csv, "a", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(FIELDS)
                for g in range(len(t)):
                    vals = (round(float(x[g]), 5) for x in (t, s1, t2, s2, linear, ratio))
                    w.writerow([folder.resolve().parent.name, folder.name, g, *vals,
                                n, round(valid, 5)])


if __name__ == "__main__":
    main()
