"""The judge interface: anything that maps uint8 images ``[N, C, H, W]`` to group logits, with a name and a
recorded accuracy, plus the uint8 preprocessing the judges share.

Every judge takes **uint8 images** (the format samples are stored in) and does its own preprocessing, so the
evaluator never needs to know which one it holds. :func:`from_callable` plugs in any ``images -> logits``
function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fairdiff.errors import FairdiffError

ForwardFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]


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

    def check_judge(self, images: np.ndarray, rows: int = 2) -> None:
        """:meth:`check_images`, then run the judge on a few of ``images`` (before any slow work): it must run,
        return ``[rows, K (+ extra classes)]`` logits, and only finite ones; else a one-line :class:`FairdiffError`."""
        self.check_images(images)
        probe = np.ascontiguousarray(images[:rows])
        try:
            lg = np.asarray(self.forward(probe)[0], np.float64)
        except FairdiffError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a foreign judge on these images is a user input problem
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shape = "x".join(map(str, images.shape[1:]))
            raise FairdiffError(f"classifier '{self.name}' failed on images {shape} (CxHxW): {msg}") from None
        width = self.num_classes + self.extra_classes
        if lg.ndim != 2 or lg.shape != (len(probe), width):
            raise FairdiffError(f"classifier '{self.name}' returned logits of shape {tuple(lg.shape)} for "
                                f"{len(probe)} images, expected ({len(probe)}, {width})")
        if not np.isfinite(lg).all():
            raise FairdiffError(f"classifier '{self.name}' returned non-finite logits (NaN or inf) on "
                                f"{len(probe)} test images; check the judge file")

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
            if not np.isfinite(lg).all():
                raise FairdiffError(f"classifier '{self.name}' returned non-finite logits (NaN or inf) for "
                                    f"{int((~np.isfinite(lg).all(1)).sum())} image(s); check the judge file")
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


def resize_uint8(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 0..255 at ``size`` x ``size`` with ``channels`` channels."""
    from fairdiff.data.split import match_channels

    x = match_channels(torch.from_numpy(np.ascontiguousarray(images)).float(), channels)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 255)


def publish_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Write a cache folder atomically: ``write(tmp)`` fills a hidden sibling, which is then renamed into place.

    A folder already there with another layout (an older fairdiff's) is replaced; when another process
    published the same folder first, its copy is kept and this one is dropped.
    """
    from fairdiff.utils.atomic import atomic_dir

    with atomic_dir(folder, keep_other=True) as tmp:
        write(tmp)
