"""The domain CNN judge: a small CNN over every class of the data source, trained once per domain and cached.

:func:`domain_classifier` trains (once, then caches) :class:`~fairdiff.models.classifier.DomainCNN` over the
classes of a run's data config. It sees a balanced subsample of real images of every class and never the run's
held-out images, on which its accuracy is measured; a calibration split it never trained on sets its open-set
confidence threshold and manifold scale. Its penultimate layer gives the features of "domain FID".

It is trained here with its own seed and is never the classifier a debiasing method trains against.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier, ForwardFn, uint8_to_float
from fairdiff.models.classifier import DomainCNN

CLASSIFIER_VERSION = 4  # 3: learns every class of the source, carries open-set calibration; 4: body features
CACHE_FILES = ("classifier.json", "calibration.safetensors", "model/config.json",
               "model/diffusion_pytorch_model.safetensors")


@dataclass
class DomainClassifierConfig:
    """How the domain CNN is trained; every field enters the cache key."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    feature_dim: int = 64
    max_per_group: int = 5000  # cap on training images per class (keeps MNIST training to seconds)
    augment: bool = True  # random +-1 pixel shifts
    seed: int = 0
    calibration_fraction: float = 0.2  # real images per class kept out of training to calibrate the judge
    confidence_quantile: float = 0.01  # share of real group images allowed below the confidence threshold
    manifold_k: int = 3  # k of the k-NN real-image manifold (as in improved precision)
    manifold_per_group: int = 1000  # cap on real reference features per group for the manifold check


def data_key(data_cfg) -> dict:
    d = {
        "source": data_cfg.source, "attribute": data_cfg.attribute, "groups": list(data_cfg.groups),
        "resolution": data_cfg.resolution, "channels": data_cfg.channels, "resize": data_cfg.resize,
        "seed": data_cfg.seed, "heldout_per_group": data_cfg.heldout_per_group,
        "path": str(Path(data_cfg.path).resolve()) if data_cfg.path else None,
    }
    if data_cfg.source == "synthetic":
        d.update(synthetic_size=data_cfg.synthetic_size, synthetic_classes=data_cfg.synthetic_classes)
    return d


def classifier_key(data_cfg, clf_cfg: DomainClassifierConfig) -> str:
    """Hash of everything that determines the trained classifier (data source, groups, size, config, seed)."""
    blob = json.dumps({"v": CLASSIFIER_VERSION, "data": data_key(data_cfg), "clf": asdict(clf_cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def real_uint8(images: np.ndarray, data_cfg) -> np.ndarray:
    """Real images through the data layer's transform, then quantised like generated samples."""
    from fairdiff.data.split import to_tensor

    out = []
    for s in range(0, len(images), 4096):
        x = to_tensor(images[s : s + 4096], data_cfg.resolution, data_cfg.channels, data_cfg.resize)
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    return np.concatenate(out)


def source_classes(attr: np.ndarray, groups: list[int]) -> list[int]:
    """Every class of the attribute, the groups first (in their order), then the other values ascending."""
    others = sorted(int(v) for v in np.unique(attr) if int(v) not in {int(g) for g in groups})
    return [int(g) for g in groups] + others


def _judge_split(attr: np.ndarray, classes: list[int], exclude: np.ndarray, is_test, max_per_class: int,
                 cal_fraction: float, rng: np.random.Generator):
    """Balanced training images of every class plus a per-class calibration set; never a held-out image (nor
    an official test image). Labels are column indices into ``classes``."""
    banned = np.zeros(len(attr), bool)
    banned[exclude] = True
    if is_test is not None:
        banned |= is_test
    pools = [rng.permutation(np.flatnonzero((attr == c) & ~banned)) for c in classes]
    cals = [p[: min(500, max(2, round(cal_fraction * len(p))))] for p in pools]
    rests = [p[len(c):] for p, c in zip(pools, cals)]
    m = min(min(len(p) for p in rests), max_per_class)
    if m < 2:
        raise FairdiffError(f"too few real images per class ({m}) to train an evaluation classifier")
    idx = np.concatenate([p[:m] for p in rests])
    lab = np.repeat(np.arange(len(classes)), m)
    cal_idx = np.concatenate(cals)
    cal_lab = np.concatenate([np.full(len(c), i) for i, c in enumerate(cals)])
    return idx, lab, cal_idx, cal_lab


def train_domain_cnn(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: DomainClassifierConfig,
                     progress: bool = False) -> DomainCNN:
    """Train :class:`DomainCNN` on uint8 images with Adam + one-cycle LR for ``cfg.steps`` steps (seeded)."""
    from fairdiff.models.classifier_fit import fit_classifier, shuffled_batches
    from fairdiff.utils.seed import derive_seed

    torch.manual_seed(derive_seed(cfg.seed, "eval-classifier", "init"))
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "eval-classifier", "batches"))
    x_all = uint8_to_float(images)
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    model = DomainCNN(x_all.shape[1], num_classes, cfg.width, cfg.feature_dim)
    batches = shuffled_batches(x_all, y_all, cfg.batch_size, g, shift=cfg.augment)
    return fit_classifier(model, batches, cfg.steps, cfg.lr, one_cycle_pct=0.15,
                          desc="training evaluation classifier", progress=progress)


def _cnn_body(model: DomainCNN) -> Callable[[np.ndarray], np.ndarray]:
    """The pooled conv features (before the feature layer): the space of the manifold test. Measured on digits
    0/1 at 16 px: uniform noise falls inside the real k-NN manifold 0 % of the time here, 35 % in the 64-d
    penultimate features, with the same share (98-100 %) of real held-out images inside."""

    @torch.no_grad()
    def body(images: np.ndarray) -> np.ndarray:
        return model.body(uint8_to_float(images)).numpy()

    return body


def _cnn_forward(model: DomainCNN) -> ForwardFn:
    @torch.no_grad()
    def forward(images: np.ndarray):
        logits, feats = model.forward_features(uint8_to_float(images))
        return logits.numpy(), feats.numpy()

    return forward


def _accuracy(forward: ForwardFn, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    pred = np.concatenate([forward(images[s : s + batch_size])[0].argmax(1) for s in range(0, len(images), batch_size)])
    return float((pred == labels).mean())


def domain_classifier(data_cfg, eval_cfg=None, *, clf_cfg: DomainClassifierConfig | None = None,
                      cache: bool = True, progress: bool = False) -> Classifier:
    """The cached domain CNN for ``data_cfg``'s groups (trained on first use, then loaded from the cache).

    Cache folder: ``cache_dir()/classifiers/<key>/`` with ``model/`` (the CNN's ``save_pretrained`` folder),
    ``calibration.safetensors`` (the manifold's reference features) and ``classifier.json`` (config, data key,
    held-out accuracy, calibration, training time). The key hashes the data source, groups, resolution,
    channels, split seed and the classifier config, so every run over the same domain (any training shares,
    any method) is judged by the same classifier. A folder of an older layout is rebuilt (same weights: the
    training is seeded).
    """
    from safetensors.torch import load_file, save_file

    from fairdiff.data import cache_dir
    from fairdiff.evaluation.judges.base import publish_folder
    from fairdiff.utils.io import read_json, write_json

    if clf_cfg is None:
        clf_cfg = DomainClassifierConfig()
        if eval_cfg is not None:
            clf_cfg.steps = eval_cfg.classifier_steps
            clf_cfg.seed = eval_cfg.seed
    key = classifier_key(data_cfg, clf_cfg)
    folder = cache_dir() / "classifiers" / key
    k = len(data_cfg.groups)
    name = f"domain-cnn-{data_cfg.source}-{key[:8]}"
    channels = data_cfg.channels
    if cache and all((folder / f).exists() for f in CACHE_FILES):
        meta = read_json(folder / "classifier.json")
        model = DomainCNN.from_pretrained(folder / "model").eval()
        ref = load_file(folder / "calibration.safetensors")["reference_features"].double().numpy()
    else:
        model, meta, ref = _train_domain_judge(data_cfg, clf_cfg, key, name, progress)
        if cache:
            def write(tmp: Path) -> None:
                model.save_pretrained(tmp / "model")
                save_file({"reference_features": torch.from_numpy(ref.astype(np.float32))},
                          tmp / "calibration.safetensors")
                write_json(tmp / "classifier.json", meta)

            publish_folder(folder, write)
    c, r = meta["in_channels"], meta["resolution"]
    if channels is not None and channels != c:  # pragma: no cover - the data key includes channels
        raise FairdiffError(f"cached classifier has {c} channels, data config asks for {channels}")
    others = meta["classes"][k:]
    return Classifier(
        name=name, num_classes=k, forward=_cnn_forward(model), accuracy=meta["heldout_accuracy"],
        input_shape=(c, r, r), has_features=True, extra_classes=len(others), manifold_features=_cnn_body(model),
        calibration={"confidence_threshold": meta["confidence_threshold"], "reference_features": ref,
                     "manifold_k": clf_cfg.manifold_k, "manifold_scale": meta["manifold_scale"],
                     "source": "judge calibration split"},
        info={"kind": "domain-cnn", "key": key, "heldout_n": meta["heldout_n"], "groups": meta["groups"],
              "other_classes": others, "all_class_accuracy": meta.get("all_class_accuracy"),
              "forced_accuracy": meta.get("forced_accuracy"),
              "train_per_group": meta["train_per_group"], "cache": str(folder) if cache else None},
    )


def _train_domain_judge(data_cfg, clf_cfg: DomainClassifierConfig, key: str, name: str, progress: bool):
    """Train the domain CNN on every class of the source and calibrate it (confidence, manifold)."""
    from fairdiff.data import build_split, load_source
    from fairdiff.metrics import confidence_threshold, manifold_scale, softmax

    t0 = time.perf_counter()
    src = load_source(data_cfg)
    split = build_split(src, data_cfg.attribute, data_cfg.groups, data_cfg.shares, data_cfg.seed, None,
                        data_cfg.heldout_per_group)
    rng = np.random.default_rng(clf_cfg.seed + 7919)
    attr = src.attributes[data_cfg.attribute]
    k = len(data_cfg.groups)
    classes = source_classes(attr, list(data_cfg.groups))
    idx, lab, cal_idx, cal_lab = _judge_split(attr, classes, split.heldout_indices, src.is_test,
                                              clf_cfg.max_per_group, clf_cfg.calibration_fraction, rng)
    x_train = real_uint8(src.images[idx], data_cfg)
    x_cal = real_uint8(src.images[cal_idx], data_cfg)
    x_held = real_uint8(src.images[split.heldout_indices], data_cfg)
    # more classes need more steps: scale with C/2 (2 classes -> cfg.steps, 10 classes -> 5x)
    run_cfg = DomainClassifierConfig(**{**asdict(clf_cfg), "steps": clf_cfg.steps * max(1, len(classes) // 2)})
    model = train_domain_cnn(x_train, lab, len(classes), run_cfg, progress=progress)
    fwd = _cnn_forward(model)
    acc = _accuracy(fwd, x_held, split.heldout_groups)  # open set: another class counts as an error
    held_logits = np.concatenate([fwd(x_held[s : s + 1000])[0] for s in range(0, len(x_held), 1000)])
    forced_acc = float((held_logits[:, :k].argmax(1) == split.heldout_groups).mean())
    cal_logits = np.concatenate([fwd(x_cal[s : s + 1000])[0] for s in range(0, len(x_cal), 1000)])
    in_group = cal_lab < k
    threshold = confidence_threshold(softmax(cal_logits[in_group]).max(1), clf_cfg.confidence_quantile)
    # manifold reference: the judge's training images of the groups; its radii are scaled so that all but
    # confidence_quantile of the (unseen) calibration images of the groups lie on it
    body = _cnn_body(model)
    ref_parts = []
    for g in range(k):
        x = real_uint8(src.images[idx[lab == g][: clf_cfg.manifold_per_group]], data_cfg)
        ref_parts += [body(x[s : s + 1000]) for s in range(0, len(x), 1000)]
    ref = np.concatenate(ref_parts).astype(np.float64)
    x_cal_g = x_cal[in_group]
    cal_body = np.concatenate([body(x_cal_g[s : s + 1000]) for s in range(0, len(x_cal_g), 1000)])
    scale = manifold_scale(ref, cal_body, clf_cfg.manifold_k, clf_cfg.confidence_quantile)
    meta = {
        "name": name, "key": key, "version": CLASSIFIER_VERSION, "num_classes": k, "classes": classes,
        "in_channels": int(x_train.shape[1]), "resolution": int(x_train.shape[-1]),
        "groups": list(data_cfg.groups), "data": data_key(data_cfg), "config": asdict(clf_cfg),
        "train_per_group": int(len(idx) // len(classes)), "heldout_accuracy": acc, "forced_accuracy": forced_acc,
        "heldout_n": len(x_held), "all_class_accuracy": float((cal_logits.argmax(1) == cal_lab).mean()),
        "calibration_n": int(len(cal_idx)), "confidence_threshold": threshold, "manifold_reference_n": len(ref),
        "manifold_scale": scale,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, meta, ref


def load(spec, data_cfg, eval_cfg=None, *, seed_offset: int = 0, progress: bool = False) -> Classifier:
    """The registry's loader (judges/registry.py): the domain CNN, trained with seed ``eval.seed + seed_offset``."""
    if not seed_offset:
        return domain_classifier(data_cfg, eval_cfg, progress=progress)
    clf_cfg = DomainClassifierConfig()
    if eval_cfg is not None:
        clf_cfg.steps = eval_cfg.classifier_steps
        clf_cfg.seed = eval_cfg.seed + seed_offset
    else:
        clf_cfg.seed = seed_offset
    return domain_classifier(data_cfg, eval_cfg, clf_cfg=clf_cfg, progress=progress)
