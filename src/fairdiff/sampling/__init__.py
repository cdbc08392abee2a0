"""Sampling: the one denoising loop (with an optional guidance) and helpers that write samples to disk."""

from fairdiff.sampling.sampler import Guidance, sample, to_uint8, save_grid
from fairdiff.sampling.files import load_samples, sample_run, write_samples

__all__ = ["Guidance", "sample", "to_uint8", "save_grid", "load_samples", "sample_run", "write_samples"]
