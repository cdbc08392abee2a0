"""Loading what the evaluator judges: generated samples (``samples.npz`` or image files) and the run's balanced
real held-out images, both as uint8 ``[N, C, H, W]``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError

OWN_PNGS = {"grid.png", "shares.png", "samples.png", "compare.png"}  # charts, never samples


def load_images(path: str | Path) -> dict:
    """Samples from ``samples.npz`` (a file, a samples folder or a run folder) or a folder of image files."""
    from fairdiff.data.sources import IMAGE_EXTS, read_image

    p = Path(path)
    if not p.exists():
        raise FairdiffError(f"samples path does not exist: {p}")
    for cand in (p, p / "samples.npz", p / "samples" / "samples.npz"):
        if cand.is_file() and cand.suffix == ".npz":
            try:
                with np.load(cand) as z:
                    data = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise FairdiffError(f"cannot read {cand}: {e}") from None
            if "images" not in data:
                raise FairdiffError(f"{cand} has no 'images' array")
            data["path"] = str(cand)
            break
    else:
        if not p.is_dir():
            raise FairdiffError(f"{p} is neither a samples folder nor a samples.npz file")
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.name not in OWN_PNGS)
        seeded = [f for f in files if f.name.startswith("seed")]
        files = seeded or files  # sample_run names images seedNNNNNN.png; prefer those when present
        if not files:
            raise FairdiffError(f"samples folder {p} is empty (no samples.npz and no image files)")
        first = read_image(files[0], "RGB")
        mode = "L" if np.all(first[..., 0] == first[..., 1]) and np.all(first[..., 1] == first[..., 2]) else "RGB"
        arrs = [read_image(f, mode) for f in files]
        if len({a.shape for a in arrs}) != 1:
            raise FairdiffError(f"images in {p} do not all have the same size")
        data = {"images": np.stack(arrs).transpose(0, 3, 1, 2).copy(), "path": str(p)}
    imgs = data["images"]
    if imgs.ndim != 4 or imgs.dtype != np.uint8:
        raise FairdiffError(f"samples must be uint8 [N, C, H, W], got {imgs.dtype} {tuple(imgs.shape)}")
    if len(imgs) == 0:
        raise FairdiffError(f"no images in {data['path']}")
    return data


def reference_uint8(data_cfg) -> tuple[np.ndarray, np.ndarray]:
    """The run's balanced real held-out images (never trained on), quantised like generated samples, and
    their group indices."""

    from fairdiff.data import prepare_data

    pd = prepare_data(data_cfg)
    return to_uint8(pd.heldout_images), pd.heldout_groups.numpy()


def to_uint8(images) -> np.ndarray:
    """Image tensors in [-1, 1] quantised as the sampler writes them (uint8, the same rounding)."""
    import torch

    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def sample_count(npz: Path) -> int:
    """How many images ``npz`` holds (0 when it does not exist); a damaged file is a one-line error."""
    if not npz.exists():
        return 0
    try:
        with np.load(npz) as z:
            return int(z["images"].shape[0]) if "images" in z.files else 0
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FairdiffError(f"cannot read {npz} (truncated or not a samples file): {e}") from None


def grid_next_to(path: Path) -> Path | None:
    """The ``grid.png`` the sampler wrote beside the samples, if any."""
    folder = path.parent if path.is_file() else path
    g = folder / "grid.png"
    return g if g.exists() else None
