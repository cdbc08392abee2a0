"""Matrices of runs (sweeps, the demo, benchmarks): resumable cells, tables and plots."""

from fairdiff.bench.matrix import Cell, run_matrix, summarise

__all__ = ["Cell", "run_matrix", "summarise"]
