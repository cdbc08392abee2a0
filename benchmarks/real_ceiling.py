"""What real images score on the bases' bar: the same judges and quality metrics applied to real held-out digits.

The bar for the MNIST bases (docs/bases.md: valid rate >= 0.95 under both judges, precision >= 0.90) is stated
for generated images. This script asks what *real* images reach under the same evaluator, so that a base's
shortfall can be read as the model's or as the bar's. For each base and each split seed, the balanced held-out
images (never trained on by the base or the judges) are split in two halves per group: half B is the quality
reference, and from half A a real set is drawn at the base's training shares (as many images as half A allows).
The same number of the base's own samples (the shipped fp16 weights, seeds 0..) is scored beside it against the
same half B, with the test judge and the second judge. Rows: one per base, split and source (``real`` /
``base``; ``seed`` is the split's seed) into ``--results`` (CSV).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_ceiling.py mnist-01 mnist-78 mnist-358 --splits 3 \\
        --results docs/results/real_ceiling.csv
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_ceiling.py mnist-78-mid=runs/bases/mnist-78-mid  # a run folder
    .venv/bin/python -m fairdiff.bench.published        # regenerate the docs' tables
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FIELDS = ["base", "seed", "source", "n", "reference_n", "valid_rate", "valid_rate_j2", "share_0", "precision",
          "recall", "domain_fid"]


def halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of every group (seeded), A and B."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2 :])
    return np.concatenate(a), np.concatenate(b)


def draw_at_shares(pool: np.ndarray, groups: np.ndarray, shares: list[float], seed: int) -> np.ndarray:
    """As many indices of ``pool`` as its groups allow, in the proportions ``shares`` (group i = shares[i])."""
    rng = np.random.default_rng(seed + 10_000)
    sizes = [int(np.sum(groups[pool] == g)) for g in range(len(shares))]
    n = int(min(s / p for s, p in zip(sizes, shares) if p > 0))
    counts = [int(np.floor(n * p)) for p in shares]
    out = [rng.permutation(pool[groups[pool] == g])[:c] for g, c in enumerate(counts)]
    return rng.permutation(np.concatenate(out))


def row(base: str, split: int, source: str, m: dict) -> dict:
    from fairdiff.bench.published import row_from_metrics

    r = row_from_metrics(m, base, source, split)
    return {**{k: r[k] for k in ("n", "valid_rate", "valid_rate_j2", "share_0", "precision", "recall", "domain_fid")},
            "base": base, "seed": split, "source": source, "reference_n": m.get("reference_n")}


def measure(name: str, splits: int, configs: Path, bootstrap: int, work: Path, folder: Path | None = None
            ) -> list[dict]:
    from fairdiff.bench.bases import make_base
    from fairdiff.config import load_config
    from fairdiff.evaluation.evaluate import evaluate_images
    from fairdiff.evaluation.judges import load_classifier, second_judge
    from fairdiff.evaluation.samples import load_images, reference_uint8
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample_run

    if folder is None:
        cfg = load_config(configs / f"{name}.yaml")
        folder = make_base(cfg, quiet=True)
    else:
        cfg = read_run_config(folder)
    real, groups = reference_uint8(cfg.data)
    need = int(np.ceil(len(real) / 2))
    samples = work / name  # the base's own images (kept: a second call scores the same ones)
    if not (samples / "samples.npz").is_file():
        sample_run(folder, need, out_dir=samples, seed=0, batch_size=cfg.sample.batch_size,
                   steps=cfg.sample.steps, scheduler=cfg.sample.scheduler, eta=cfg.sample.eta, png=False,
                   progress=False)
    fake = load_images(samples)["images"]
    clf = load_classifier(cfg.eval.classifier, cfg.data, cfg.eval)
    second = second_judge(cfg.data)
    rows = []
    for s in range(splits):
        a, b = halves(groups, s)
        pick = draw_at_shares(a, groups, list(cfg.data.shares), s)
        for source, imgs in (("real", real[pick]), ("base", fake[np.random.default_rng(s).permutation(
                len(fake))[: len(pick)]])):
            m = evaluate_images(imgs, clf, reference_images=real[b], reference_groups=groups[b],
                                n_bootstrap=bootstrap, seed=s, second_judge=second, pr_k=cfg.eval.pr_k,
                                target=cfg.eval.target)
            rows.append(row(name, s, source, m))
            r = rows[-1]
            print(f"{name} split {s} {source:4s} n={r['n']}: valid {r['valid_rate']:.3f} / j2 "
                  f"{r['valid_rate_j2']:.3f}, precision {r['precision']:.3f}, recall {r['recall']:.3f}, "
                  f"domain FID {r['domain_fid']:.1f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bases", nargs="+", help="names of configs/bases/NAME.yaml (made or installed), or NAME=RUN for "
                    "a trained run folder scored under the label NAME")
    ap.add_argument("--splits", type=int, default=3, help="split seeds (default 3)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--configs", type=Path, default=Path("configs/bases"))
    ap.add_argument("--work", type=Path, default=Path("runs/real_ceiling"), help="where the bases' samples go")
    ap.add_argument("--results", type=Path, default=None, help="CSV to write (rows of these bases replaced)")
    args = ap.parse_args()
    specs = [(b.partition("=")[0], Path(b.partition("=")[2]) if "=" in b else None) for b in args.bases]
    rows = [r for name, folder in specs for r in measure(name, args.splits, args.configs, args.bootstrap, args.work,
                                                          folder)]
    names = [name for name, _ in specs]
    for name in names:
        for src in ("real", "base"):
            sel = [r for r in rows if r["base"] == name and r["source"] == src]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("valid_rate", "valid_rate_j2", "precision",
                                                                      "recall")}
            print(f"{name} {src:4s} mean of {len(sel)} splits: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if args.results:
        from fairdiff.bench.published import read_rows, write_rows

        old = [r for r in read_rows(args.results) if r["base"] not in set(names)]
        write_rows(args.results, old + rows, FIELDS)
        print(f"{len(rows)} rows -> {args.results}")

if __name__ == "__main__":
    main()
