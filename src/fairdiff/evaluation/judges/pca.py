"""The second, independent judge: PCA of downsampled pixels + multinomial logistic regression (scikit-learn).

It shares no model code with the CNN judge (``evaluation/judges/domain.py``): its own preprocessing (area
downsampling to at most 16x16 in numpy), its own features (PCA), its own model family (a linear classifier)
and its own split of the real images (another seed), and it runs in plain numpy at inference. It learns every
class of the data source, so an image of another class is *outside*, and it is calibrated like the CNN judge:
a confidence threshold and a k-NN manifold in its PCA space, both from real images it never trained on.
It is trained once per domain (about a second for digits, seconds for MNIST) and cached as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier

PCA_JUDGE_VERSION = 1


@dataclass
class PcaJudgeConfig:
    """How the PCA + logistic-regression judge is built; every field enters the cache key."""

    size: int = 16  # images are area-downsampled to at most size x size
    components: int = 40
    c: float = 0.5  # inverse L2 strength of the logistic regression
    max_per_class: int = 3000
    calibration_fraction: float = 0.2
    outside_quantile: float = 0.01  # share of real calibration images allowed below threshold / off manifold
    manifold_k: int = 3
    manifold_per_group: int = 1000
    seed: int = 1


def pixel_features(images: np.ndarray, size: int = 16) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> float ``[N, C * h * w]`` in [0, 1], area-averaged down to at most size x size."""
    x = np.asarray(images, np.float64) / 255.0
    _, _, h, w = x.shape
    if h > size:
        edges = np.linspace(0, h, size + 1).round().astype(int)
        x = np.add.reduceat(x, edges[:-1], axis=2) / np.diff(edges)[None, None, :, None]
    if w > size:
        edges = np.linspace(0, w, size + 1).round().astype(int)
        x = np.add.reduceat(x, edges[:-1], axis=3) / np.diff(edges)[None, None, None, :]
    return x.reshape(len(x), -1)


def _split(attr: np.ndarray, classes: list[int], banned: np.ndarray, cfg: PcaJudgeConfig):
    rng = np.random.default_rng(cfg.seed * 1_000_003 + 17)
    train, train_lab, cal, cal_lab = [], [], [], []
    for i, c in enumerate(classes):
        pool = rng.permutation(np.flatnonzero((attr == c) & ~banned))
        n_cal = min(500, max(2, int(round(cfg.calibration_fraction * len(pool)))))
        cal.append(pool[:n_cal])
        cal_lab.append(np.full(n_cal, i))
        rest = pool[n_cal : n_cal + cfg.max_per_class]
        train.append(rest)
        train_lab.append(np.full(len(rest), i))
    if min(len(t) for t in train) < 2:
        raise FairdiffError("too few real images per class to build the second judge")
    return np.concatenate(train), np.concatenate(train_lab), np.concatenate(cal), np.concatenate(cal_lab)


def _forward_fn(arrays: dict, size: int):
    mean, comp, coef, icpt = arrays["mean"], arrays["components"], arrays["coef"], arrays["intercept"]

    def features(images: np.ndarray) -> np.ndarray:
        return (pixel_features(images, size) - mean) @ comp.T

    def forward(images: np.ndarray):
        z = features(images)
        return z @ coef.T + icpt, z

    return forward


def _key(data_key: dict, cfg: PcaJudgeConfig) -> str:
    blob = json.dumps({"v": PCA_JUDGE_VERSION, "data": data_key, "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pca_judge(data_cfg, *, cfg: PcaJudgeConfig | None = None, cache: bool = True) -> Classifier:
    """The cached PCA + logistic-regression judge for ``data_cfg`` (columns: groups first, then other classes)."""
    from safetensors.numpy import load_file, save_file

    from fairdiff.data import cache_dir
    from fairdiff.evaluation.judges.base import publish_folder
    from fairdiff.evaluation.judges.domain import data_key
    from fairdiff.utils.io import read_json, write_json

    cfg = cfg or PcaJudgeConfig()
    key = _key(data_key(data_cfg), cfg)
    folder = cache_dir() / "classifiers" / f"pca-lr-{key}"
    if cache and (folder / "judge.json").exists() and (folder / "judge.safetensors").exists():
        meta = read_json(folder / "judge.json")
        arrays = {k: v.astype(np.float64) for k, v in load_file(folder / "judge.safetensors").items()}
    else:
        arrays, meta = _build(data_cfg, cfg, key)
        if cache:
            def write(tmp: Path) -> None:
                save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()},
                          tmp / "judge.safetensors")
                write_json(tmp / "judge.json", meta)

            publish_folder(folder, write)
    k = len(data_cfg.groups)
    c, r = meta["in_channels"], meta["resolution"]
    return Classifier(
        name=f"pca-lr-{data_cfg.source}-{key[:8]}", num_classes=k, forward=_forward_fn(arrays, cfg.size),
        accuracy=meta["heldout_accuracy"], input_shape=(c, r, r), has_features=True,
        extra_classes=len(meta["classes"]) - k,
        calibration={"confidence_threshold": meta["confidence_threshold"],
                     "reference_features": arrays["reference_features"], "manifold_k": cfg.manifold_k,
                     "manifold_scale": meta["manifold_scale"], "source": "judge calibration split"},
        info={"kind": "pca-logistic-regression", "key": key, "heldout_n": meta["heldout_n"],
              "groups": list(data_cfg.groups), "other_classes": meta["classes"][k:],
              "all_class_accuracy": meta["all_class_accuracy"], "components": meta["components"],
              "cache": str(folder) if cache else None},
    )


def _build(data_cfg, cfg: PcaJudgeConfig, key: str) -> tuple[dict, dict]:
    import warnings

    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from fairdiff.data import build_split, load_source
    from fairdiff.data.split import to_tensor
    from fairdiff.metrics import confidence_threshold, manifold_scale, softmax

    t0 = time.perf_counter()
    src = load_source(data_cfg)
    split = build_split(src, data_cfg.attribute, data_cfg.groups, data_cfg.shares, data_cfg.seed, None,
                        data_cfg.heldout_per_group)
    attr = src.attributes[data_cfg.attribute]
    groups = [int(g) for g in data_cfg.groups]
    classes = groups + sorted(int(v) for v in np.unique(attr) if int(v) not in set(groups))
    banned = np.zeros(len(attr), bool)
    banned[split.heldout_indices] = True
    if src.is_test is not None:
        banned |= src.is_test

    def real(idx: np.ndarray) -> np.ndarray:  # the data layer's transform, quantised like stored samples
        out = []
        for s in range(0, len(idx), 4096):
            x = to_tensor(src.images[idx[s : s + 4096]], data_cfg.resolution, data_cfg.channels, data_cfg.resize)
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy())
        return np.concatenate(out)

    tr, tr_lab, cal, cal_lab = _split(attr, classes, banned, cfg)
    x_tr = real(tr)
    f_tr = pixel_features(x_tr, cfg.size)
    n_comp = int(min(cfg.components, f_tr.shape[1], len(f_tr) - 1))
    pca = PCA(n_components=n_comp, random_state=cfg.seed).fit(f_tr)
    z_tr = pca.transform(f_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(C=cfg.c, max_iter=1000).fit(z_tr, tr_lab)
    coef, icpt = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; two logit columns give the same softmax
        coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
    full = np.zeros((len(classes), coef.shape[1]))
    full_b = np.full(len(classes), -1e9)  # a class absent from training can never win
    full[lr.classes_], full_b[lr.classes_] = coef, icpt
    arrays = {"mean": pca.mean_, "components": pca.components_, "coef": full, "intercept": full_b}
    fwd = _forward_fn(arrays, cfg.size)
    k = len(groups)
    x_cal = real(cal)
    cal_logits, cal_z = fwd(x_cal)
    in_group = cal_lab < k
    threshold = confidence_threshold(softmax(cal_logits[in_group]).max(1), cfg.outside_quantile)
    ref = np.concatenate([z_tr[tr_lab == g][: cfg.manifold_per_group] for g in range(k)])
    scale = manifold_scale(ref, cal_z[in_group], cfg.manifold_k, cfg.outside_quantile)
    arrays["reference_features"] = ref
    held_logits, _ = fwd(real(split.heldout_indices))
    meta = {
        "key": key, "version": PCA_JUDGE_VERSION, "classes": classes, "config": asdict(cfg),
        "in_channels": int(x_tr.shape[1]), "resolution": int(x_tr.shape[-1]), "components": n_comp,
        "train_n": len(tr), "calibration_n": len(cal), "heldout_n": len(split.heldout_indices),
        "heldout_accuracy": float((held_logits.argmax(1) == split.heldout_groups).mean()),
        "all_class_accuracy": float((cal_logits.argmax(1) == cal_lab).mean()),
        "confidence_threshold": threshold, "manifold_scale": scale,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return arrays, meta


def second_judge(data_cfg, progress: bool = False) -> Classifier | None:
    """The built-in second judge for ``data_cfg``'s source (None where the source has none, e.g. a folder)."""
    del progress
    if getattr(data_cfg, "source", None) not in ("digits", "mnist", "synthetic", "faces-mini"):
        return None
    return pca_judge(data_cfg)

