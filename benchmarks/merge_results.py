"""Merge rows that protocol runs wrote into side files (``--results runs/...csv``, so that two runs on two cores
never write one file at once) into the published results file, replacing rows with the same key.

    .venv/bin/python benchmarks/merge_results.py runs/protocol/extra.csv [...] [--into docs/results/debias.csv]
    .venv/bin/python -m fairdiff.bench.published        # regenerate the docs' tables
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--into", type=Path, default=Path("docs/results/debias.csv"))
    args = ap.parse_args()
    from fairdiff.bench.published import add_rows, read_rows

    for f in args.files:
        rows = read_rows(f)
        add_rows(args.into, rows)
        print(f"{f}: {len(rows)} rows into {args.into}")


if __name__ == "__main__":
    main()
