"""One method-agnostic trainer (accelerate) and its checkpoints; run folders themselves are :mod:`fairdiff.runs`."""

from fairdiff.training.trainer import TrainResult, train
from fairdiff.training.checkpoint import latest_checkpoint

__all__ = ["TrainResult", "train", "latest_checkpoint"]
