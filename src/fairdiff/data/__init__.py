"""Data: image sources, deliberately biased training splits with manifests, and tensor datasets.

This layer knows no models. Everything returns images as uint8 arrays ``[N, C, H, W]`` plus integer
attributes, so each source is small and the split logic is shared.
"""

from fairdiff.data.sources import ImageSet, cache_dir
from fairdiff.data.split import BiasedSplit, build_split, PreparedData
from fairdiff.data.load import load_source, prepare_data

__all__ = ["ImageSet", "load_source", "cache_dir", "BiasedSplit", "build_split", "prepare_data", "PreparedData"]
