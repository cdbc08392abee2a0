"""Where a debiased model's valid rate goes: the base's quality per group, and the fine-tune recipe itself.

Read from validation-judge pilots only (seeds from PILOT_SEED, the same seeds for every model), so that nothing
chosen from these rows is chosen on the test judge. For every model the script prints its valid rate, its shares
among valid images and, per group g, the share of its images that the judge calls outside among those whose
forced choice (arg-max over the groups) is g: ``o_g``, the rate at which the model fails when it draws "a g".

From a base's ``o_g`` follows the valid rate that any method which moves the group mix *without* changing how well
each group is drawn reaches at a target ``t`` (shares among valid images): a model drawing forced-choice group g
with probability ``f_g`` has valid rate ``sum f_g (1 - o_g)`` and valid share ``f_g (1 - o_g) / valid``; setting
the valid shares to ``t`` gives

    valid(t) = 1 / sum_g t_g / (1 - o_g)

(the target-weighted harmonic mean of the per-group valid rates). Where it lies more than 0.02 under the base's
valid rate, the valid-rate bar of docs/debias.md is out of reach of every method but filtering unless the method
also draws the minority better than the base does.

Models: the base, ``--folders`` (finished runs, e.g. protocol folders), and ``--variant NAME OVERRIDE...``:
the base fine-tuned on its own training data at its own mix (method baseline, no reweighting) with the protocol's
fine-tune recipe plus the overrides, which measures what the recipe alone costs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune_quality.py BASE --target 0.5,0.5 \\
        --variant plain --variant ema995 train.ema_decay=0.995 --folders runs/protocol/mnist-78/reweight-t0.5-0.5-s0 \\
        --out runs/ftq/mnist-78 --csv runs/ftq/mnist-78.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import FINETUNE  # noqa: E402  the protocol's fine-tune recipe

FIELDS = ["setting", "model", "pilot_n", "valid_rate", "shares", "outside_by_group", "forced_shares",
          "valid_at_target", "target", "finetune_overrides", "seconds"]


def reachable_valid(outside_by_group: np.ndarray, target: np.ndarray) -> float:
    """The valid rate at valid shares ``target`` of a model that fails group g at rate ``outside_by_group[g]``."""
    ok = 1.0 - np.asarray(outside_by_group, dtype=float)
    t = np.asarray(target, dtype=float)
    if np.any(ok[t > 0] <= 0):
        return 0.0
    return float(1.0 / np.sum(t[t > 0] / ok[t > 0]))


def group_quality(verdicts: np.ndarray, forced: np.ndarray, k: int) -> dict:
    """Valid rate, valid shares, forced-choice shares and the outside rate per forced-choice group."""
    from fairdiff.metrics import OUTSIDE

    valid = verdicts != OUTSIDE
    n_forced = np.bincount(forced, minlength=k)
    n_out = np.bincount(forced[~valid], minlength=k)
    return {"valid_rate": float(valid.mean()),
            "shares": (np.bincount(verdicts[valid], minlength=k) / max(int(valid.sum()), 1)).tolist(),
            "forced_shares": (n_forced / len(forced)).tolist(),
            "outside_by_group": (n_out / np.maximum(n_forced, 1)).tolist()}


def judge_pilot(folder: Path, n: int) -> dict:
    """``group_quality`` of ``n`` pilot images of the model in ``folder`` (validation judge)."""
    from fairdiff.debias.run import _load_checked_judge, _verdict_fn, draw_pilot
    from fairdiff.evaluation.openset import judge_images
    from fairdiff.runs import read_run_config

    cfg = read_run_config(folder)
    k = len(cfg.data.groups)
    judge = _load_checked_judge(None, cfg, k, False)
    cal = _verdict_fn(judge, cfg.data).calibration
    v = judge_images(judge, draw_pilot(folder, n, cfg=cfg), cal)
    return group_quality(v.verdicts, v.forced, k)


def finetune(base: Path, out: Path, overrides: list[str], seed: int) -> float:
    """The base fine-tuned on its own training data (method baseline) with the protocol recipe + ``overrides``."""
    from fairdiff.config import load_config
    from fairdiff.training import train

    if (out / "model").is_dir():
        return 0.0
    t0 = time.time()
    cfg = load_config(base / "config.yaml", [*FINETUNE, "method.name=baseline", f"model.pretrained={base.resolve()}",
                                             f"train.seed={seed}", *overrides])
    train(cfg, out, resume="latest" if (out / "config.yaml").exists() else None, quiet=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--target", required=True, help="comma-separated target shares, e.g. 0.5,0.5")
    ap.add_argument("--setting", default=None, help="the setting column (default: the base folder's name)")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                    help="fine-tune the base at its own mix with the protocol recipe plus these overrides")
    ap.add_argument("--folders", nargs="*", type=Path, default=[], help="finished runs to judge as well")
    ap.add_argument("--seed", type=int, default=0, help="train.seed of the variants")
    ap.add_argument("--pilot-n", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("runs/ftq"))
    ap.add_argument("--csv", type=Path)
    args = ap.parse_args()
    target = np.array([float(x) for x in args.target.split(",")])
    setting = args.setting or args.base.resolve().name
    models: list[tuple[str, Path, list[str]]] = [("base", args.base, [])]
    models += [(f.name, f, []) for f in args.folders]
    for name, *ovs in args.variant:
        models.append((f"finetune-{name}-s{args.seed}", args.out / f"{name}-s{args.seed}", ovs))
    for name, folder, ovs in models:
        t0 = time.time()
        if name.startswith("finetune-"):
            finetune(args.base, folder, ovs, args.seed)
        q = judge_pilot(folder, args.pilot_n)
        q["valid_at_target"] = reachable_valid(q["outside_by_group"], target)
        sec = round(time.time() - t0, 1)
        print(f"{name}: valid {q['valid_rate']:.4f}  shares {np.round(q['shares'], 3).tolist()}  outside by group "
              f"{np.round(q['outside_by_group'], 4).tolist()}  -> valid at target {q['valid_at_target']:.4f} "
              f"({sec:.0f} s)", flush=True)
        if args.csv:
            row = [setting, name, args.pilot_n, round(q["valid_rate"], 5),
                   json.dumps(np.round(q["shares"], 5).tolist()),
                   json.dumps(np.round(q["outside_by_group"], 5).tolist()),
                   json.dumps(np.round(q["forced_shares"], 5).tolist()), round(q["valid_at_target"], 5),
                   json.dumps(target.tolist()), " ".join(ovs), sec]
            write_row(args.csv, row)


def write_row(path: Path, row: list) -> None:
    """Add ``row`` to the CSV at ``path``, replacing an earlier row of the same setting and model."""
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r[:2] != [str(row[0]), str(row[1])]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows([*rows, row])

if __name__ == "__main__":
    main()
