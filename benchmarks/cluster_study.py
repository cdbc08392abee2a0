"""Which label-free clustering finds a base's groups? A study on the base's own pilot images.

The label-free forms of filter / guide / distill (``--judge clusters``) take their groups from clusters of 2000 of
the base's own images (the pilot the cluster judge is fitted on: seeds from 10,000,000, never scored). They stop
short of the target when the clusters are not the groups. This script draws that pilot once per base, clusters
it several ways (no label enters any of them), and scores each clustering with the **validation judge** (never
the test judge: the choice made here is a hyperparameter):

- purity: the share of the pilot's valid images whose cluster's majority group is their own group;
- ARI: adjusted Rand index between clusters and the judge's groups on valid images;
- share at the target: the judged share of group 0 among valid images a filter keeping to the uniform target
  over clusters would give (each cluster's judged mix weighted by the target; the labelled filter gives the
  target itself).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cluster_study.py BASE [BASE ...] --out runs/cluster_study.json \
        --csv docs/results/cluster_study.csv

The CSV has one row per base and clustering (docs/debias.md's table is generated from it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _pilot(base: Path, n: int, cache: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """The base's cluster pilot (uint8 images) and the validation judge's verdicts on it (cached as .npz)."""
    from fairdiff.debias.run import CLUSTER_PILOT, PILOT_SEED, _drawer, _load_checked_judge, _verdict_fn
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.runs import load_model_checked, read_run_config
    from fairdiff.sampling.files import resolve_device

    cfg = read_run_config(base)
    k = len(cfg.data.groups)
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["verdicts"], k
    n = n or CLUSTER_PILOT
    dev = resolve_device("cpu")
    unet, sched_cfg, vae = load_model_checked(base, dev)
    sched = build_sampling_scheduler(cfg.sample.scheduler, sched_cfg)
    draw = _drawer(unet, sched, vae, steps=cfg.sample.steps, eta=cfg.sample.eta, batch_size=cfg.sample.batch_size,
                   device=dev)
    images = draw(list(range(PILOT_SEED, PILOT_SEED + n)))
    verdicts = _verdict_fn(_load_checked_judge(None, cfg, k, False), cfg.data)(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, verdicts=verdicts)
    return images, verdicts, k


def _order_by_size(lab: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(lab, minlength=k)
    order = np.argsort(-counts, kind="stable")
    relabel = np.empty(k, np.int64)
    relabel[order] = np.arange(k)
    return relabel[lab]


def clusterings(images: np.ndarray, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    out = {}
    for nc in (8, 32):
        f = PCA(n_components=nc, random_state=seed).fit_transform(x)
        out[f"kmeans-pca{nc}"] = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(f).labels_
        out[f"ward-pca{nc}"] = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(f).labels_
        out[f"gmm-full-pca{nc}"] = GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed).fit(f) \
            .predict(f)
        for nn in (10, 30):
            out[f"spectral-knn{nn}-pca{nc}"] = SpectralClustering(
                n_clusters=k, affinity="nearest_neighbors", n_neighbors=nn, random_state=seed,
                assign_labels="cluster_qr").fit(f).labels_
    return {name: _order_by_size(np.asarray(lab, np.int64), k) for name, lab in out.items()}


def h_clusterings(base: Path, k: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Clusterings of the base's own h (the U-Net's middle block, flattened) recorded while it draws the cluster
    pilot (DDIM, as the label-free heads record it), at a quarter, half, three quarters and the end of the
    chain; returns them with the validation judge's verdicts on those images."""
    from sklearn.decomposition import PCA

    from fairdiff.data.clusters import cluster_labels
    from fairdiff.debias.run import CLUSTER_PILOT, PILOT_SEED, _load_checked_judge, _verdict_fn
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.runs import load_model_checked, read_run_config
    from fairdiff.sampling import sample
    from fairdiff.sampling.denoisers import RecordH

    cfg = read_run_config(base)
    unet, sched_cfg, _ = load_model_checked(base, "cpu")
    rec = RecordH("flatten", unet=unet)
    x = sample(unet, build_sampling_scheduler("ddim", sched_cfg), range(PILOT_SEED, PILOT_SEED + CLUSTER_PILOT),
               batch_size=250, num_steps=cfg.sample.steps, guidance=rec, device="cpu", progress=False)
    verdicts = _verdict_fn(_load_checked_judge(None, cfg, k, False), cfg.data)(to_uint8(x))
    f = rec.feats().numpy()  # [steps, N, D]
    out = {}
    for si in sorted({len(f) // 4, len(f) // 2, 3 * len(f) // 4, len(f) - 1}):
        h = PCA(n_components=32, random_state=seed).fit_transform(f[si])
        for m in ("spectral", "kmeans"):
            out[f"h-step{si + 1}of{len(f)}-{m}-pca32"] = _order_by_size(cluster_labels(h, k, m, seed), k)
    return out, verdicts


def score(lab: np.ndarray, verdicts: np.ndarray, k: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    ok = (verdicts >= 0) & (verdicts < k)
    lab, v = lab[ok], verdicts[ok]
    mix = np.zeros((k, k))
    for c in range(k):
        if (lab == c).any():
            mix[c] = np.bincount(v[lab == c], minlength=k) / (lab == c).sum()
    purity = float(sum((lab == c).sum() * mix[c].max() for c in range(k)) / len(lab))
    shares = (np.full(k, 1 / k)[:, None] * mix).sum(0)  # a filter at the uniform target over clusters
    return {"purity": round(purity, 4), "ari": round(float(adjusted_rand_score(v, lab)), 4),
            "cluster_sizes": np.bincount(lab, minlength=k).tolist(),
            "share_at_uniform": [round(float(s), 4) for s in shares]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bases", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=0, help="pilot size (default: the cluster judge's, 2000)")
    ap.add_argument("--out", type=Path, default=Path("runs/cluster_study.json"))
    ap.add_argument("--csv", type=Path, help="also write one row per base and clustering here")
    ap.add_argument("--h-space", action="store_true", help="also cluster the base's h at four DDIM steps (draws "
                    "the pilot again while recording h)")
    args = ap.parse_args(argv)
    res, table = {}, []
    for base in args.bases:
        images, verdicts, k = _pilot(base, args.n, args.out.parent / "cluster_pilots" / f"{base.name}.npz")
        t0 = time.perf_counter()
        rows = {}
        found = {name: (lab, verdicts) for name, lab in clusterings(images, k).items()}
        if args.h_space:
            hc, hv = h_clusterings(base, k)
            found.update({name: (lab, hv) for name, lab in hc.items()})
        for name, (lab, v) in found.items():
            rows[name] = score(lab, v, k)
            table.append({"base": base.name.rsplit("-", 1)[0].removeprefix("base-"), "clustering": name,
                          "pilot": len(images), "purity": rows[name]["purity"], "ari": rows[name]["ari"],
                          **{f"share_{g}_at_uniform": v for g, v in enumerate(rows[name]["share_at_uniform"])}})
            print(f"{base.name:40s} {name:24s} {json.dumps(rows[name])}", flush=True)
        res[base.name] = {"k": k, "judged_shares": (np.bincount(verdicts[verdicts >= 0], minlength=k)
                                                    / (verdicts >= 0).sum()).round(4).tolist(),
                          "seconds": round(time.perf_counter() - t0, 1), "clusterings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    if args.csv:
        from fairdiff.bench.published import write_rows

        fields = list(dict.fromkeys(f for r in table for f in r))
        write_rows(args.csv, table, fields)


if __name__ == "__main__":
    main()
