"""One method-agnostic trainer (accelerate), run folders and checkpoints."""

from fairdiff.training.trainer import TrainResult, train
from fairdiff.training.checkpoint import latest_checkpoint, load_run_model, export_diffusers

__all__ = ["TrainResult", "train", "latest_checkpoint", "load_run_model", "export_diffusers"]
