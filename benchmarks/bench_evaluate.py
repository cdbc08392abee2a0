"""Benchmark: evaluate 10,000 generated 28x28 images with everything: both judges (CNN + PCA/logistic
regression), open-set verdicts (other class, confidence, k-NN manifold), strict / valid / forced FD, corrected
shares, 10 replicates, 1,000 bootstrap resamples, domain FID, precision / recall, report.

Goal: under 60 s on 2 CPU cores. The "generated" images are real MNIST digits (or sklearn digits upscaled to
28x28 when MNIST is not fetched) drawn 4:1 between two groups, with a little pixel noise, written as a
``samples.npz``; the evaluation is the same ``evaluate_samples`` call that ``fairdiff evaluate`` makes
(loading, classifier, fairness metrics with CIs, domain FID, precision / recall, report and charts).
The cached domain classifier is trained first and timed separately (that happens once per domain).

    .venv/bin/python benchmarks/bench_evaluate.py [--n 10000] [--bootstrap 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the goal is stated for 2 cores)")
    ap.add_argument("--cache", help="classifier cache folder (default: a temporary one, so training is timed)")
    ap.add_argument("--replicates", type=int, default=10)
    args = ap.parse_args()

    mnist = Path.home() / ".cache" / "fairdiff" / "mnist" / "mnist.pkl.gz"
    tmp = Path(tempfile.mkdtemp(prefix="fairdiff-bench-"))
    os.environ["FAIRDIFF_CACHE"] = args.cache or str(tmp / "cache")

    import torch

    torch.set_num_threads(args.threads)
    from fairdiff.config import DataConfig, EvalConfig
    from fairdiff.data import load_source
    from fairdiff.data.split import to_tensor
    from fairdiff.evaluation import evaluate_samples
    from fairdiff.evaluation.judges import domain_classifier

    if mnist.exists():
        data = DataConfig(source="mnist", path=str(mnist), groups=[0, 1], shares=[0.8, 0.2], resolution=28,
                          heldout_per_group=500)
    else:
        data = DataConfig(source="digits", groups=[0, 1], shares=[0.8, 0.2], resolution=28, heldout_per_group=30)
    ev = EvalConfig(bootstrap=args.bootstrap)

    t = time.perf_counter()
    domain_classifier(data, ev)  # train + cache once, timed on its own
    t_train = time.perf_counter() - t
    from fairdiff.evaluation.judges import pca_judge

    t = time.perf_counter()
    pca_judge(data)
    t_train2 = time.perf_counter() - t

    src = load_source(data)
    attr = src.attributes[data.attribute]
    rng = np.random.default_rng(0)
    n0 = round(args.n * 0.8)
    pick = np.concatenate([rng.choice(np.flatnonzero(attr == 0), n0),
                           rng.choice(np.flatnonzero(attr == 1), args.n - n0)])
    pick = rng.permutation(pick)  # generated samples come in random order; replicates are contiguous slices
    x = to_tensor(src.images[pick], data.resolution, data.channels, data.resize)
    x = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    imgs = ((x + 1) * 127.5).round().to(torch.uint8).numpy()
    samples = tmp / "samples"
    samples.mkdir()
    np.savez(samples / "samples.npz", images=imgs, seeds=np.arange(args.n))

    t = time.perf_counter()
    m = evaluate_samples(samples, data, ev, progress=False, replicates=args.replicates)
    t_eval = time.perf_counter() - t

    print(f"data: {data.source} groups {data.groups} at {data.resolution}x{data.resolution}; "
          f"{args.n} images; {args.bootstrap} bootstrap resamples; {args.replicates} replicates; "
          f"torch threads {args.threads}; CPU cores visible {os.cpu_count()}")
    print(f"judge 1 {m['classifier']['name']} held-out accuracy {m['classifier']['accuracy']:.4f} "
          f"(trained/loaded in {t_train:.1f} s); judge 2 {m['judge2']['classifier']['name']} accuracy "
          f"{m['judge2']['classifier']['accuracy']:.4f} (built in {t_train2:.1f} s)")
    print(f"strict FD {m['fd_strict']:.4f} CI {np.round(m['fd_strict_ci'], 4).tolist()} valid rate "
          f"{m['valid_rate']:.4f} valid shares {np.round(m['valid_shares'], 4).tolist()} corrected "
          f"{np.round(m['corrected_shares'], 4).tolist()} forced FD {m['fd_forced']:.4f}; judge 2 strict FD "
          f"{m['judge2']['fd_strict']:.4f} valid {m['judge2']['valid_rate']:.4f}; replicates strict FD "
          f"{m['replicates']['fd_strict']['mean']:.4f} +- {m['replicates']['fd_strict']['std']:.4f}")
    print(f"domainFID {m['domain_fid']:.3f} P {m['precision']:.3f} R {m['recall']:.3f} "
          f"(reference {m['reference_n']} real images)")
    print(f"evaluate (load + both judges + open-set + corrected + replicates + {args.bootstrap} bootstrap + "
          f"quality + report): {t_eval:.1f} s [goal < 60 s] -> {'PASS' if t_eval < 60 else 'SLOW'}")


if __name__ == "__main__":
    main()
