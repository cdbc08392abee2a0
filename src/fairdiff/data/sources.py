"""Image sources: embedded digits, MNIST, a labelled folder, CelebA, faces-mini and synthetic shapes."""

from __future__ import annotations

import csv
import gzip
import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fairdiff.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageSet:
    """Images as uint8 ``[N, C, H, W]`` with integer attributes (each an array of length N).

    ``is_test`` marks images of an official test split (MNIST); the biased-split builder draws its balanced
    held-out set from them when present, so training never sees those images.
    """

    name: str
    images: np.ndarray
    attributes: dict[str, np.ndarray]
    is_test: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError("images must be uint8 [N, C, H, W]")
        for k, v in self.attributes.items():
            if len(v) != len(self.images):
                raise ValueError(f"attribute {k} has {len(v)} values for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)


def cache_dir() -> Path:
    """Where fetched data and cached classifiers live: ``$FAIRDIFF_CACHE`` or ``~/.cache/fairdiff``."""
    return Path(os.environ.get("FAIRDIFF_CACHE") or Path.home() / ".cache" / "fairdiff")


# --------------------------------------------------------------------------------------------- digits
def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 digits (values 0..16), scaled to 0..255."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    imgs = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    return ImageSet("digits", imgs, {"label": d.target.astype(np.int64)})


# --------------------------------------------------------------------------------------------- MNIST
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: anything else in the file is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self.ALLOWED:
            import importlib

            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                if name == "_reconstruct":
                    return np.core.multiarray._reconstruct  # type: ignore[attr-defined]
                raise
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_mnist_pickle(path: str | Path) -> ImageSet:
    """Read ``mnist.pkl.gz`` (train/valid/test of 784 floats in [0,1)) with a numpy-only unpickler."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            parts = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(f"cannot read MNIST pickle {path}: {e}") from None
    xs, ys, test = [], [], []
    try:  # (train, valid, test) pairs of [N, 784] images and N labels; anything else is not this file
        if not isinstance(parts, tuple) or len(parts) != 3:
            raise ValueError("expected 3 (images, labels) pairs")
        for i, (x, y) in enumerate(parts):
            x, y = np.asarray(x), np.asarray(y)
            if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),) or not len(x):
                raise ValueError(f"part {i} holds images {x.shape} and labels {y.shape}, not [N, 784] and [N]")
            xs.append(x)
            ys.append(y)
            test.append(np.full(len(y), i == 2))
        x = np.concatenate(xs)
        imgs = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        labels = np.concatenate(ys).astype(np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} is not an MNIST pickle: {e}") from None
    return ImageSet("mnist", imgs, {"label": labels}, np.concatenate(test))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise DataError(f"{path} is not an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated")
    return arr.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = folder / cand
        if p.exists():
            return p
    return None


def read_mnist_idx(folder: str | Path) -> ImageSet:
    """Read the four standard MNIST IDX files (optionally gzipped) from ``folder``."""
    folder = Path(folder)
    names = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }
    found = {k: _find(folder, v) for k, v in names.items()}
    missing = [names[k] for k, v in found.items() if v is None]
    if missing:
        raise DataError(f"MNIST folder {folder} lacks {', '.join(missing)}")
    tx, ty = _read_idx(found["train_x"]), _read_idx(found["train_y"])
    vx, vy = _read_idx(found["test_x"]), _read_idx(found["test_y"])
    imgs = np.concatenate([tx, vx])[:, None]
    labels = np.concatenate([ty, vy]).astype(np.int64)
    is_test = np.concatenate([np.zeros(len(ty), bool), np.ones(len(vy), bool)])
    return ImageSet("mnist", imgs, {"label": labels}, is_test)


def mnist_cache_file() -> Path:
    return cache_dir() / "mnist" / "mnist.pkl.gz"


def load_mnist(path: str | None) -> ImageSet:
    if path:
        p = Path(path)
        if not p.exists():
            raise DataError(f"MNIST path does not exist: {p}")
        if p.is_file():
            return read_mnist_pickle(p)
        if (p / "mnist.pkl.gz").exists():
            return read_mnist_pickle(p / "mnist.pkl.gz")
        return read_mnist_idx(p)
    f = mnist_cache_file()
    if not f.exists():
        raise DataError(f"MNIST not found in {f.parent}; run 'fairdiff data fetch mnist' or set data.path")
    return read_mnist_pickle(f)


# --------------------------------------------------------------------------------------------- images
def read_image(path: Path, mode: str) -> np.ndarray:
    """One image file as uint8 HWC (mode 'L' or 'RGB'); a corrupt file is a DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _load_images(paths: list[Path], mode: str, size: int, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """Load, optionally crop, and resize images to ``size``x``size`` (uint8 [N, C, H, W])."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = np.empty((len(paths), 1 if mode == "L" else 3, size, size), np.uint8)
    for i, p in enumerate(tqdm(paths, desc="loading images", disable=len(paths) < 2000, leave=False)):
        arr = read_image(p, mode)
        im = Image.fromarray(arr[..., 0] if mode == "L" else arr)
        if crop is not None:
            im = im.crop(crop)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        a = np.asarray(im, np.uint8)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def load_folder(path: str | None, size: int, channels: int | None) -> ImageSet:
    """A folder of images plus ``labels.csv`` / ``labels.jsonl`` with a ``file`` column and integer attributes."""
    if not path:
        raise DataError("data.path is required for source 'folder'")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"data folder does not exist: {folder}")
    rows: list[dict] = []
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first column's name
    try:
        if (folder / "labels.csv").exists():
            with open(folder / "labels.csv", newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        elif (folder / "labels.jsonl").exists():
            with open(folder / "labels.jsonl", encoding="utf-8-sig") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        else:
            raise DataError(f"{folder} has no labels.csv or labels.jsonl")
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError) as e:
        raise DataError(f"{folder}: labels file cannot be read (not UTF-8 CSV / JSON lines?): {e}") from None
    if rows and not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{folder}: every line of labels.jsonl must be a JSON object")
    if not rows:
        raise DataError(f"{folder} labels file is empty")
    if "file" not in rows[0]:
        raise DataError(f"{folder} labels file needs a 'file' column")
    attrs: dict[str, list[int]] = {k: [] for k in rows[0] if k != "file"}
    paths = []
    for r in rows:
        p = folder / str(r["file"])
        if not p.exists():
            raise DataError(f"image listed in labels but missing: {p}")
        paths.append(p)
        for k in attrs:
            try:
                attrs[k].append(int(float(r[k])))
            except (TypeError, ValueError, KeyError):
                raise DataError(f"{folder}: attribute '{k}' of {r['file']} is not an integer") from None
    mode = "L" if channels == 1 else "RGB"
    imgs = _load_images(paths, mode, size, None)
    return ImageSet("folder", imgs, {k: np.asarray(v, np.int64) for k, v in attrs.items()})


CELEBA_CROP = (25, 50, 153, 178)  # a square face crop of the aligned 178x218 images


def load_celeba(path: str | None, size: int, max_images: int | None = None) -> ImageSet:
    """Standard CelebA layout: ``img_align_celeba/`` and ``list_attr_celeba.txt`` (attributes -1/1 -> 0/1)."""
    if not path:
        raise DataError("data.path is required for source 'celeba' (a folder with img_align_celeba/)")
    root = Path(path)
    attr_file, img_dir = root / "list_attr_celeba.txt", root / "img_align_celeba"
    if not attr_file.exists() or not img_dir.is_dir():
        raise DataError(f"{root} is not a CelebA folder (needs img_align_celeba/ and list_attr_celeba.txt)")
    try:
        lines = attr_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{attr_file} is not UTF-8 text: {e}") from None
    if len(lines) < 3:
        raise DataError(f"{attr_file} is truncated (expected a count line, a header and one line per image)")
    names = lines[1].split()
    files, vals = [], []
    for line in lines[2:]:
        parts = line.split()
        if len(parts) != len(names) + 1:
            continue
        files.append(img_dir / parts[0])
        vals.append([int(v) for v in parts[1:]])
        if max_images and len(files) >= max_images:
            break
    if not files:
        raise DataError(f"{attr_file} lists no images")
    arr = (np.asarray(vals) > 0).astype(np.int64)
    imgs = _load_images(files, "RGB", size, CELEBA_CROP)
    return ImageSet("celeba", imgs, {n: arr[:, i] for i, n in enumerate(names)})


# --------------------------------------------------------------------------------------------- synthetic
def make_synthetic(n: int, k: int, size: int = 16, channels: int = 1, seed: int = 0) -> ImageSet:
    """Procedurally drawn shapes with a known K-ary attribute ``label`` (0 disc, 1 square, 2 cross, 3 ring, ...).

    Shape position and scale vary; ``label`` is the shape. Used by tests and as a sanity data set.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = rng.integers(0, k, n)
    imgs = np.zeros((n, channels, size, size), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.2, 0.3) * size
        dx, dy = xx - cx, yy - cy
        kind = labels[i] % 4
        if kind == 0:
            m = dx**2 + dy**2 <= r**2
        elif kind == 1:
            m = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        elif kind == 2:
            m = ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
        else:
            d = np.sqrt(dx**2 + dy**2)
            m = (d <= r) & (d >= r * 0.55)
        intensity = 255 - 40 * (labels[i] // 4)
        colour = rng.uniform(0.6, 1.0, channels) * intensity
        imgs[i] = (m[None] * colour[:, None, None]).astype(np.uint8)
    return ImageSet("synthetic", imgs, {"label": labels.astype(np.int64)})
