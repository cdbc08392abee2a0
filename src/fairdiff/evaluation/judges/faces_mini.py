"""The ``auto`` judge of ``data.source: faces-mini``: the ONNX model that made its labels, with the domain CNN's
features for quality and the manifold test."""

from __future__ import annotations

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier
from fairdiff.evaluation.judges.domain import domain_classifier, real_uint8
from fairdiff.evaluation.judges.onnx import onnx_classifier


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
    x = real_uint8(real.images, data_cfg)  # the data layer's channels / quantisation, as samples are stored
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


def load(spec, data_cfg, eval_cfg=None, *, seed_offset: int = 0, progress: bool = False) -> Classifier:
    """The registry's loader: the one gender model there is (``seed_offset`` does not apply)."""
    return faces_mini_classifier(data_cfg, eval_cfg, progress=progress)
