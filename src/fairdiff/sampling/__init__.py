"""Sampling: the one denoising loop (with an optional guidance) and drawing a run's samples to disk.

``load_samples`` and ``write_samples`` (the samples folder, :mod:`fairdiff.runs.samples`) and ``to_uint8`` /
``save_grid`` (:mod:`fairdiff.utils.images`) are re-exported here, where they were first published.
"""

from fairdiff.runs.samples import load_samples, write_samples
from fairdiff.sampling.sampler import Guidance, sample
from fairdiff.sampling.files import sample_run
from fairdiff.utils.images import save_grid, to_uint8

__all__ = ["Guidance", "sample", "to_uint8", "save_grid", "load_samples", "sample_run", "write_samples"]
