"""Reference sets for label-free debiasing (methods tiw / iw; docs/tiw.md).

A reference set is a small, *unlabeled* sample of the distribution one wants. Two ways to get one:

- ``data.reference``: N images drawn from the source, a count (an integer >= 1) or a fraction (< 1) of the
  training set, at ``data.reference_shares`` (default balanced), from images that are neither training nor
  held-out (nor in an official test split). The attribute only *selects* them, as a curator would; the method
  receives the images alone (``PreparedData.reference_images``). Their groups are kept beside them for the
  manifest and for ``data.train_on=reference`` only.
- ``data.reference_dir``: a folder of the user's own images (any of PNG / JPEG / BMP / WebP). No labels are needed;
  an optional ``groups.csv`` (``file,group``: every image's file name and its group index) gives their groups.

``data.train_on=reference`` replaces the training set by the reference set (the "reference only" baseline);
``data.train_on=both`` trains on the training set and the reference set together, which needs the reference's
groups (``fairdiff debias --method distill --mix-real``: the base's filtered images beside the real ones, the two
reweighted together toward the target).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch

from fairdiff.data.sources import IMAGE_EXTS, ImageSet, _load_images
from fairdiff.data.split import BiasedSplit, PreparedData, _largest_remainder, to_tensor
from fairdiff.errors import DataError
from fairdiff.utils.seed import derive_seed


def reference_count(spec: int | float, n_train: int) -> int:
    """The number of reference images ``data.reference`` asks for: a count, or a fraction of ``n_train``."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise DataError(f"data.reference: expected a count or a fraction, got {spec!r}")
    if isinstance(spec, float) and not spec.is_integer():
        if not 0.0 < spec < 1.0:
            raise DataError(f"data.reference: a fraction must lie in (0, 1), a count must be an integer; got {spec}")
        n = int(round(spec * n_train))
        if n < 1:
            raise DataError(f"data.reference={spec} of {n_train} training images is no image at all")
        return n
    n = int(spec)
    if n < 1:
        raise DataError(f"data.reference: a count must be at least 1, got {n}")
    return n


def draw_reference(images: ImageSet, split: BiasedSplit, attribute: str, count: int,
                   shares: list[float] | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source indices, group indices) of ``count`` images at ``shares`` that training and held-out never use."""
    k = len(split.groups)
    shares = [1.0 / k] * k if shares is None else list(shares)
    from fairdiff.metrics.functional import check_shares

    try:
        check_shares(shares, k, what="data.reference_shares")
    except ValueError as e:
        raise DataError(str(e)) from None
    attr = images.attributes[attribute]
    used = np.zeros(len(images), bool)
    used[split.train_indices] = True
    used[split.heldout_indices] = True
    if images.is_test is not None:
        used |= np.asarray(images.is_test, bool)
    rng = np.random.default_rng(derive_seed(seed, "reference"))
    counts = _largest_remainder(count, shares)
    idx, grp = [], []
    for gi, (g, c) in enumerate(zip(split.groups, counts)):
        pool = np.flatnonzero((attr == g) & ~used)
        if c > len(pool):
            raise DataError(
                f"data.reference: {c} images of {attribute}={g} wanted but only {len(pool)} are neither training "
                "nor held-out; lower data.reference or data.size, or use data.reference_dir")
        idx.append(rng.permutation(pool)[:c])
        grp.append(np.full(c, gi, np.int64))
    return np.concatenate(idx).astype(np.int64), np.concatenate(grp)


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder``, sorted by name: the order a reference folder's images are read in."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def load_reference_dir(path: str, resolution: int, channels: int, resize: str = "resize") -> torch.Tensor:
    """Every image file in ``path`` (sorted by name) as a float tensor in [-1, 1] shaped like the training data."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"data.reference_dir does not exist: {folder}")
    files = _image_files(folder)
    if not files:
        raise DataError(f"data.reference_dir {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    arr = _load_images(files, "L" if channels == 1 else "RGB", resolution, None)
    return to_tensor(arr, resolution, channels, resize)


GROUPS_FILE = "groups.csv"  # in a reference_dir: file,group (the group index of each image), optional


def reference_dir_groups(path: str, num_groups: int) -> np.ndarray | None:
    """The groups of ``path``'s images in the order :func:`load_reference_dir` reads them, from its
    ``groups.csv``; None when the folder has none. Every image must be listed once with a group index in
    ``[0, num_groups)``."""
    folder = Path(path)
    table = folder / GROUPS_FILE
    if not table.is_file():
        return None
    files = [p.name for p in _image_files(folder)]
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        given = {r["file"]: int(r["group"]) for r in rows}
    except (KeyError, TypeError, ValueError, csv.Error) as e:
        raise DataError(f"{table}: expected a header 'file,group' and one integer group per image ({e})") from None
    if len(given) != len(rows):
        raise DataError(f"{table}: a file is listed twice")
    missing = [f for f in files if f not in given]
    if missing or len(given) != len(files):
        extra = sorted(set(given) - set(files))
        raise DataError(f"{table}: {len(missing)} image(s) of the folder not listed (e.g. {missing[:1]}) and "
                        f"{len(extra)} listed that are not there (e.g. {extra[:1]})")
    groups = np.asarray([given[f] for f in files], np.int64)
    if groups.min() < 0 or groups.max() >= num_groups:
        raise DataError(f"{table}: groups must lie in 0..{num_groups - 1}, got {groups.min()}..{groups.max()}")
    return groups


def attach_reference(cfg, images: ImageSet, data: PreparedData) -> PreparedData:  # cfg: DataConfig
    """``data`` with its reference set (``cfg.reference`` / ``cfg.reference_dir``) and ``cfg.train_on`` applied."""
    spec, folder = getattr(cfg, "reference", None), getattr(cfg, "reference_dir", None)
    train_on = getattr(cfg, "train_on", "train")
    if spec is None and not folder:
        if train_on != "train":
            raise DataError(f"data.train_on={train_on} needs a reference set: set data.reference or "
                            "data.reference_dir")
        if getattr(cfg, "reference_shares", None) is not None:
            raise DataError("data.reference_shares is set but data.reference is not")
        return data
    if spec is not None and folder:
        raise DataError("set one of data.reference (draw from the source) and data.reference_dir (your images)")
    manifest = dict(data.manifest)
    if folder:
        ref = load_reference_dir(folder, cfg.resolution, data.train_images.shape[1], cfg.resize)
        known = reference_dir_groups(folder, data.num_groups)
        ref_groups = None if known is None else torch.from_numpy(known)
        info = {"from": "folder", "path": str(folder), "count": len(ref)}
        if known is not None:
            info["counts"] = np.bincount(known, minlength=data.num_groups).tolist()
    else:
        n = reference_count(spec, len(data.train_images))
        idx, ref_groups = draw_reference(images, data.split, cfg.attribute, n, cfg.reference_shares, cfg.seed)
        ref = to_tensor(images.images[idx], cfg.resolution, cfg.channels, cfg.resize)
        ref_groups = torch.from_numpy(ref_groups)
        info = {"from": "source", "count": int(n), "spec": spec,
                "shares": cfg.reference_shares or [1.0 / data.num_groups] * data.num_groups,
                "counts": np.bincount(ref_groups.numpy(), minlength=data.num_groups).tolist(),
                "indices": idx.tolist()}
    info["train_on"] = train_on
    manifest["reference"] = info
    out = dataclasses.replace(data, reference_images=ref, reference_groups=ref_groups, manifest=manifest)
    if train_on == "reference":
        if ref_groups is None:  # groups of the user's images are unknown; only label-free methods may use them
            ref_groups = torch.zeros(len(ref), dtype=torch.long)
            manifest["reference"]["groups_unknown"] = True
        manifest["train_counts_biased"] = manifest["train_counts"]
        manifest["train_counts"] = np.bincount(ref_groups.numpy(), minlength=data.num_groups).tolist()
        out = dataclasses.replace(out, train_images=ref, train_groups=ref_groups)
    elif train_on == "both":
        if ref_groups is None:
            raise DataError(f"data.train_on=both needs the reference images' groups: add {GROUPS_FILE} (file,group) "
                            f"to {folder}")
        manifest["train_counts_biased"] = manifest["train_counts"]
        groups = torch.cat([data.train_groups.to(torch.long), ref_groups.to(torch.long)])
        manifest["train_counts"] = np.bincount(groups.numpy(), minlength=data.num_groups).tolist()
        out = dataclasses.replace(out, train_images=torch.cat([data.train_images, ref]), train_groups=groups)
    return out
