"""Training objectives and sampling-time guidances, one file per method. No method owns a training loop."""

from __future__ import annotations

from fairdiff.errors import ConfigError
from fairdiff.methods.base import DataInfo, LossOutput, Objective, add_noise, predict_noise, predicted_x0
from fairdiff.methods.baseline import BaselineObjective


def build_objective(method_cfg) -> Objective:
    """The objective that ``method.name`` names, configured from the method section."""
    name = method_cfg.name
    if name == "baseline":
        return BaselineObjective()
    if name == "ddm":
        from fairdiff.methods.ddm import DDMObjective

        return DDMObjective.from_config(method_cfg)
    if name == "reweight":
        from fairdiff.methods.reweight import ReweightObjective

        return ReweightObjective.from_config(method_cfg)
    if name == "align":
        from fairdiff.methods.align import AlignObjective

        return AlignObjective.from_config(method_cfg)
    if name in ("tiw", "iw"):  # label-free, with a reference set (docs/tiw.md)
        from fairdiff.methods.tiw import IWObjective, TIWObjective

        return (TIWObjective if name == "tiw" else IWObjective).from_config(method_cfg)
    raise ConfigError(f"unknown method '{name}'")


__all__ = [
    "DataInfo", "LossOutput", "Objective", "BaselineObjective", "build_objective",
    "add_noise", "predict_noise", "predicted_x0",
]
