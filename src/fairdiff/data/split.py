"""Deliberately biased training splits, a balanced held-out split, and the manifest that records them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fairdiff.data.sources import ImageSet
from fairdiff.errors import DataError


@dataclass
class BiasedSplit:
    """Indices into an :class:`ImageSet`: a biased training set and a balanced held-out set."""

    groups: list[int]  # attribute values, group k is groups[k]
    shares: list[float]
    seed: int
    train_indices: np.ndarray
    train_groups: np.ndarray  # group index 0..K-1 of each training image
    heldout_indices: np.ndarray
    heldout_groups: np.ndarray

    def counts(self) -> list[int]:
        return np.bincount(self.train_groups, minlength=len(self.groups)).tolist()

    def manifest(self, source: str, attribute: str) -> dict:
        return {
            "source": source,
            "attribute": attribute,
            "groups": self.groups,
            "shares": self.shares,
            "seed": self.seed,
            "train_counts": self.counts(),
            "heldout_counts": np.bincount(self.heldout_groups, minlength=len(self.groups)).tolist(),
            "train_indices": self.train_indices.tolist(),
            "heldout_indices": self.heldout_indices.tolist(),
            "sha256": hashlib.sha256(self.train_indices.tobytes() + self.heldout_indices.tobytes()).hexdigest(),
        }


def _largest_remainder(total: int, shares: list[float]) -> list[int]:
    raw = np.asarray(shares, float) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def build_split(
    images: ImageSet,
    attribute: str,
    groups: list[int],
    shares: list[float],
    seed: int,
    size: int | None = None,
    heldout_per_group: int = 30,
) -> BiasedSplit:
    """Subsample ``images`` so group k (attribute == groups[k]) makes up ``shares[k]`` of the training set.

    A balanced held-out set of ``heldout_per_group`` images per group is taken first (from the official test
    split when the source has one), so evaluation compares against real images that training never saw.
    The training set is the largest one with exactly these shares, or ``size`` images if given.
    """
    if attribute not in images.attributes:
        known = ", ".join(sorted(images.attributes))
        raise DataError(f"data.attribute '{attribute}' not in source '{images.name}' (has: {known})")
    from fairdiff.metrics.functional import check_shares

    try:
        check_shares(shares, len(groups), what="data.shares")
    except ValueError as e:
        raise DataError(str(e)) from None
    attr = images.attributes[attribute]
    rng = np.random.default_rng(seed)
    is_test = images.is_test if images.is_test is not None else None
    pools, held = [], []
    for g in groups:
        idx = np.flatnonzero(attr == g)
        if len(idx) == 0:
            raise DataError(f"group {attribute}={g} has zero images in source '{images.name}'")
        if is_test is not None:
            test_idx, train_idx = idx[is_test[idx]], idx[~is_test[idx]]
            held.append(rng.permutation(test_idx))
            pools.append(rng.permutation(train_idx))
        else:
            perm = rng.permutation(idx)
            held.append(perm[:heldout_per_group])
            pools.append(perm[heldout_per_group:])
    h = min(heldout_per_group, *(len(x) for x in held))
    heldout = [x[:h] for x in held]
    for g, pool in zip(groups, pools):
        if len(pool) == 0:
            raise DataError(f"group {attribute}={g} has no images left for training after the held-out split")
    max_total = min(len(p) / s for p, s in zip(pools, shares) if s > 0)
    if size is None:
        total = int(np.floor(max_total + 1e-9))
        for cand in range(total, max(0, total - 1000), -1):  # prefer a size where the shares are exact
            if all(abs(cand * s - round(cand * s)) < 1e-6 for s in shares):
                total = cand
                break
    else:
        total = size
    counts = _largest_remainder(total, shares)
    for g, c, pool in zip(groups, counts, pools):
        if c > len(pool):
            raise DataError(
                f"data.size={total} needs {c} images of {attribute}={g} but only {len(pool)} are available"
            )
    train_idx = np.concatenate([p[:c] for p, c in zip(pools, counts)])
    train_grp = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)
    if len(train_idx) == 0:
        raise DataError("the biased split is empty")
    return BiasedSplit(
        groups=list(groups), shares=list(shares), seed=seed,
        train_indices=train_idx.astype(np.int64), train_groups=train_grp,
        heldout_indices=np.concatenate(heldout).astype(np.int64),
        heldout_groups=np.concatenate([np.full(h, k) for k in range(len(groups))]).astype(np.int64),
    )


def match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> colour by repetition, colour -> grey by the channel mean; ``None`` keeps the channels."""
    if channels is None or channels == x.shape[1]:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, channels, 1, 1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise DataError(f"cannot turn {x.shape[1]} channels into {channels}")


def to_tensor(images: np.ndarray, resolution: int, channels: int | None, mode: str = "resize") -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float in [-1, 1] at ``resolution`` with ``channels`` channels."""
    x = match_channels(torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0), channels)
    h = x.shape[-1]
    if h != resolution:
        if mode == "pad" and resolution > h:
            p = resolution - h
            x = F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2), value=-1.0)
        else:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(-1.0, 1.0)
    return x.contiguous()


@dataclass
class PreparedData:
    """What the trainer and evaluator consume: tensors in [-1, 1] and group indices."""

    train_images: torch.Tensor
    train_groups: torch.Tensor
    heldout_images: torch.Tensor
    heldout_groups: torch.Tensor
    split: BiasedSplit
    manifest: dict
    # a reference set for label-free methods (data/reference.py); its groups never reach a method
    reference_images: torch.Tensor | None = None
    reference_groups: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.split.groups)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]
