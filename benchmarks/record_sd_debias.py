"""Rows of the text-to-image debias results (docs/results/debias_sd.csv) from audit and ``debias --sd`` folders.

    .venv/bin/python benchmarks/record_sd_debias.py --setting "known-bias: a handwritten digit" \\
        base=runs/sd/audits/known-bias-p1 filter=runs/sd/filter-p1-t0.5 guide=runs/sd/guide-p1-t0.5 ...

``METHOD=FOLDER``: an audit folder (its one prompt's ``metrics.json``; the base, unchanged) or a debias folder
(``metrics.json`` + ``debias.json``). The audit's base row is written once per target of the debias rows, so that
each is compared with the base at its own target (the shares and valid rate are the base's; the strict FD is the
base's distance to that target). One row per setting / method / target; a rerun replaces it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fairdiff.bench.published import add_rows, row_from_metrics


def _metrics(folder: Path) -> dict:
    if (folder / "debias.json").is_file():
        m = json.loads((folder / "metrics.json").read_text())
        m["debias"] = json.loads((folder / "debias.json").read_text())
        return m
    found = sorted((folder / "prompts").glob("*/metrics.json"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: not a debias folder nor an audit folder of one prompt ({len(found)} prompts)")
    return json.loads(found[0].read_text())


def _strict_fd(m: dict, target: list[float]) -> float:
    """The strict FD of the base's strict shares (groups then outside: outside counted as deviation) against
    another target, by the metric the evaluator uses."""
    from fairdiff.metrics.openset import strict_fairness_discrepancy

    strict = m.get("strict_shares") or []
    return strict_fairness_discrepancy(strict, target) if strict else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=Path("docs/results/debias_sd.csv"))
    ap.add_argument("items", nargs="+", help="METHOD=FOLDER")
    args = ap.parse_args()
    rows, base = [], None
    for item in args.items:
        method, _, folder = item.partition("=")
        m = _metrics(Path(folder))
        if method == "base":
            base = m
            continue
        rows.append(row_from_metrics(m, args.setting, method, args.seed))
    if base is not None:
        for target in sorted({r["target_0"] for r in rows} or {(base.get("target") or [0.5])[0]}):
            t = [float(target), 1 - float(target)]
            row = row_from_metrics({**base, "target": t}, args.setting, "base", args.seed)
            row["fd_strict"], row["fd_strict_lo"], row["fd_strict_hi"] = _strict_fd(base, t), math.nan, math.nan
            rows.insert(0, row)
    add_rows(args.results, rows)
    for r in rows:
        print(f"{r['setting']} {r['method']} target {r['target_0']}: valid {r['valid_rate']:.3f} "
              f"share0 {r['share_0']:.3f} drawn/kept {r['drawn_per_kept']}")


if __name__ == "__main__":
    main()
