"""Training objectives and sampling-time guidances, one file per method. No method owns a training loop."""

from __future__ import annotations

from fairdiff.methods.base import DataInfo, LossOutput, Objective, add_noise, predict_noise, predicted_x0
from fairdiff.methods.baseline import BaselineObjective
from fairdiff.methods.registry import MethodEntry, build_objective, get_method, method_names


__all__ = [
    "DataInfo", "LossOutput", "Objective", "BaselineObjective", "build_objective",
    "add_noise", "predict_noise", "predicted_x0", "MethodEntry", "get_method", "method_names",
]
