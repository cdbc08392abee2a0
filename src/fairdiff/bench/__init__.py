"""Matrices of runs (sweeps, the demo, ``fairdiff bench``): resumable cells, tables and plots."""

from fairdiff.bench.config import BenchCell, BenchConfig, expand_cells, load_bench_config
from fairdiff.bench.matrix import Cell, run_matrix, summarise
from fairdiff.bench.runner import run_bench

__all__ = ["BenchCell", "BenchConfig", "Cell", "expand_cells", "load_bench_config", "run_bench", "run_matrix",
           "summarise"]
