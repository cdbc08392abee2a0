"""Entry points of the data layer: load the source a config names, and prepare its biased split.

They sit above the modules they combine (sources, faces-mini, split, reference sets), so that those import
each other in one direction only.
"""

from __future__ import annotations

import torch

from fairdiff.data.faces import load_faces_mini  # fetched with 'fairdiff data fetch faces-mini'
from fairdiff.data.reference import attach_reference
from fairdiff.data.sources import ImageSet, load_celeba, load_digits, load_folder, load_mnist, make_synthetic
from fairdiff.data.split import PreparedData, build_split, to_tensor
from fairdiff.errors import DataError


def load_source(cfg) -> ImageSet:  # cfg: DataConfig
    """Load the source that ``cfg.source`` names (images at their native size for digits / MNIST)."""
    src = cfg.source
    if src == "digits":
        return load_digits()
    if src == "mnist":
        return load_mnist(cfg.path)
    if src == "synthetic":
        return make_synthetic(cfg.synthetic_size, cfg.synthetic_classes, cfg.resolution, cfg.channels or 1, cfg.seed)
    if src == "folder":
        return load_folder(cfg.path, cfg.resolution, cfg.channels)
    if src == "celeba":
        return load_celeba(cfg.path, cfg.resolution)
    if src == "faces-mini":
        return load_faces_mini(cfg.path, cfg.resolution)
    raise DataError(f"unknown data source '{src}'")


def prepare_data(cfg) -> PreparedData:  # cfg: DataConfig
    """Load the source, build the biased split and return tensors ready for training and evaluation."""
    images = load_source(cfg)
    if len(images) == 0:
        raise DataError(f"data source '{cfg.source}' holds no images")
    split = build_split(images, cfg.attribute, cfg.groups, cfg.shares, cfg.seed, cfg.size, cfg.heldout_per_group)
    tr = to_tensor(images.images[split.train_indices], cfg.resolution, cfg.channels, cfg.resize)
    he = to_tensor(images.images[split.heldout_indices], cfg.resolution, cfg.channels, cfg.resize)
    data = PreparedData(
        train_images=tr,
        train_groups=torch.from_numpy(split.train_groups),
        heldout_images=he,
        heldout_groups=torch.from_numpy(split.heldout_groups),
        split=split,
        manifest=split.manifest(cfg.source, cfg.attribute),
    )
    return attach_reference(cfg, images, data)  # data.reference / reference_dir / train_on
