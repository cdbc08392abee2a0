"""Image preparation and ONNX inference for the faces-mini gender classifier (``gender-v1.onnx``).

Resizing with PIL by a named method, the classifier's input transform (``(byte - mean) / 256`` at 32x32) and an
onnxruntime CPU session; :mod:`fairdiff.data.faces` builds the faces-mini cache with these, and the ONNX judges of
:mod:`fairdiff.evaluation.judges` reuse them. Data layer: onnxruntime directly, nothing from models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairdiff.errors import DataError

LABEL_SIZE = 32
LABEL_RESIZE = "nearest"  # any size -> 32 for gender-v1 (pseudo-labels and evaluation); see the module doc
GENDER_V1_MEAN = np.array([122.782, 117.001, 104.298], np.float32)

_METHODS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def _pil_method(method: str):
    from PIL import Image

    if method not in _METHODS:
        raise DataError(f"unknown resize method '{method}' (known: {', '.join(_METHODS)})")
    return getattr(Image.Resampling, method.upper())


def resize_images(images: np.ndarray, size: int, method: str) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` (C = 1 or 3) -> uint8 ``[N, C, size, size]`` with a PIL filter.

    PIL's box / bilinear / bicubic / lanczos widen their kernels when shrinking (antialiased); ``nearest``
    picks the source pixel under each output pixel's centre.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] not in (1, 3):
        raise DataError(f"expected uint8 images [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[-2:] == (size, size):
        return images
    resample = _pil_method(method)
    out = np.empty((len(images), images.shape[1], size, size), np.uint8)
    for i, img in enumerate(images):
        a = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        r = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((size, size), resample), np.uint8)
        out[i] = r[None] if r.ndim == 2 else r.transpose(2, 0, 1)
    return out


def gender_v1_input(images: np.ndarray, size: int = LABEL_SIZE, method: str = LABEL_RESIZE) -> np.ndarray:
    """gender-v1 preprocessing: RGB resized to 32x32 (nearest), ``(byte - mean) / 256``, float32 NCHW.

    Grey images are repeated to three channels. The one place this preprocessing is defined: the pseudo-labels
    and the evaluation classifier both call it.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    x = resize_images(images, size, method).astype(np.float32)
    x -= GENDER_V1_MEAN[None, :, None, None]
    x /= np.float32(256.0)
    return np.ascontiguousarray(x)


# ------------------------------------------------------------------------------------------ the model
def open_onnx_session(model_path: str | Path, what: str = "ONNX model"):
    """An onnxruntime CPU session for ``model_path`` (one-line DataError when missing, corrupt or no runtime)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{what} not found: {model_path}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise DataError("onnxruntime is not installed; install the extra: pip install 'fairdiff[faces]'") from None
    try:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for corrupt / foreign files
        raise DataError(f"cannot load {what} {model_path}: {str(e).splitlines()[0][:200]}") from None


def open_gender_model(model_path: str | Path):
    """An onnxruntime session for ``gender-v1.onnx`` (see :func:`open_onnx_session`)."""
    return open_onnx_session(model_path, "gender model")


def gender_probabilities(model_path: str | Path, images: np.ndarray, batch_size: int = 256,
                         session=None) -> np.ndarray:
    """Male probability (float32 ``[N]``) of uint8 face crops ``[N, 3, H, W]`` by gender-v1 (any H = W)."""
    sess = session if session is not None else open_gender_model(model_path)
    name = sess.get_inputs()[0].name
    out = []
    for s in range(0, len(images), batch_size):
        p = np.asarray(sess.run(None, {name: gender_v1_input(images[s : s + batch_size])})[0], np.float32)
        if p.ndim != 2 or p.shape[1] != 2:
            raise DataError(f"gender model returned shape {p.shape}, expected [N, 2] (female, male)")
        out.append(p[:, 1])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ------------------------------------------------------------------------------------------ building
