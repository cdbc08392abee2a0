"""Write docs/results/bases.csv (the shipped bases' own evaluation, from their base.json) and, for every
``--curve NAME=FOLDER`` (a ``fairdiff base curve`` output), its rows into docs/results/curves.csv.

    .venv/bin/python benchmarks/record_bases.py --curve digits-01=runs/bases/digits-01-curve
    .venv/bin/python -m fairdiff.bench.published        # regenerate the docs' tables
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

BASE_COLS = ["base", "groups", "train_shares", "steps", "batch_size", "train_seconds", "n", "valid_rate",
             "share_0", "fd_strict", "precision", "recall", "domain_fid", "valid_rate_j2", "copy_rate", "key"]
CURVE_COLS = ["base", "step", "valid_rate", "valid_rate_j2", "share_0", "precision", "recall", "domain_fid",
              "copy_rate", "n"]


def _write(path: Path, cols: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def main() -> None:
    from fairdiff.bench.bases import list_shipped

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve", action="append", default=[], metavar="NAME=FOLDER")
    ap.add_argument("--results", type=Path, default=Path("docs/results"))
    args = ap.parse_args()
    rows = []
    for b in list_shipped():
        m = b.get("metrics") or {}
        rec = b["recipe"]
        rows.append({"base": b["name"], "groups": "/".join(map(str, rec["data"]["groups"])),
                     "train_shares": "/".join(f"{s:g}" for s in rec["data"]["shares"]), "steps": b["steps"],
                     "batch_size": b["batch_size"], "train_seconds": b["train_seconds"], "n": m.get("n"),
                     "valid_rate": m.get("valid_rate"), "share_0": (m.get("valid_shares") or [None])[0],
                     "fd_strict": m.get("fd_strict"), "precision": m.get("precision"), "recall": m.get("recall"),
                     "domain_fid": m.get("domain_fid"), "valid_rate_j2": m.get("valid_rate_j2"),
                     "copy_rate": m.get("copy_rate"), "key": b["key"]})
    _write(args.results / "bases.csv", BASE_COLS, rows)
    old = []
    if (args.results / "curves.csv").is_file():
        with open(args.results / "curves.csv", newline="") as f:
            old = list(csv.DictReader(f))
    names = {c.split("=", 1)[0] for c in args.curve}
    curve_rows = [r for r in old if r["base"] not in names]
    for spec in args.curve:
        name, folder = spec.split("=", 1)
        for step_dir in sorted(Path(folder).glob("step-*"), key=lambda p: int(p.name[5:])):
            m = json.loads((step_dir / "metrics.json").read_text())
            curve_rows.append({"base": name, "step": int(step_dir.name[5:]), "valid_rate": m.get("valid_rate"),
                               "valid_rate_j2": (m.get("judge2") or {}).get("valid_rate"),
                               "share_0": (m.get("valid_shares") or [None])[0], "precision": m.get("precision"),
                               "recall": m.get("recall"), "domain_fid": m.get("domain_fid"),
                               "copy_rate": (m.get("copying") or {}).get("copy_rate"), "n": m.get("n")})
    _write(args.results / "curves.csv", CURVE_COLS, curve_rows)
    print(f"{len(rows)} bases, {len(curve_rows)} curve rows")


if __name__ == "__main__":
    main()
