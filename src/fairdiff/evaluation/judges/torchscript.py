"""TorchScript judges from local files (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier, uint8_to_float


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript file on the CPU in eval mode; a missing or unreadable file is a one-line error."""
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
    module = load_torchscript(path)
    c, h, w = input_shape
    # an unknown channel count: RGB first (most judges), then grayscale; the first that runs is the judge's
    probes = [(1, ch, h or 16, w or 16) for ch in ((c,) if c else (3, 1))]
    k, error = None, None
    with torch.no_grad():
        for probe_shape in probes:
            try:
                k = int(module(torch.zeros(probe_shape)).shape[-1])
                break
            except Exception as e:  # noqa: BLE001 - any failure of a foreign module is a user input problem
                error = error or f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if k is None:
        shapes = " or ".join(str(s) for s in probes)
        raise FairdiffError(f"TorchScript classifier {path} failed on input {shapes}: {error}")

    @torch.no_grad()
    def forward(images: np.ndarray):
        return module(uint8_to_float(images)).numpy(), None

    return Classifier(name=name or Path(path).stem, num_classes=k, forward=forward, accuracy=accuracy,
                      input_shape=tuple(input_shape), info={"kind": "torchscript", "path": str(path)})


def load(spec, data_cfg=None, eval_cfg=None, *, seed_offset: int = 0, progress: bool = False):
    """The registry's loader: the TorchScript file ``spec``."""
    return torchscript_classifier(spec)
