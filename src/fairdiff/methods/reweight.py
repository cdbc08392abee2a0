"""Group reweighting (importance weighting of the denoising loss; spec section 2).

Each image's denoising loss is weighted by w(g) = target(g) / data_share(g) for its group g. Under the training
distribution these weights already average to 1, so the loss scale matches the baseline's; in expectation the
model is trained on the target mixture of groups. Groups come from the attribute or from clusters.

``balance="resample"`` reaches the same expectation another way: the trainer draws each batch with image
probabilities proportional to w(g) and the loss is the plain mean. A batch of a 4:1 pair at 50/50 then holds
about as many images of each group, where weighting gives a few minority images weights near 2.5 and the rest
weights near 0.6: the same gradient on average, with less variance from step to step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.methods.base import DataInfo, LossOutput, Objective


def group_weights(counts: list[int], target: list[float] | None = None) -> np.ndarray:
    """w(g) = target(g) / data_share(g); uniform target by default. Mean over the data is exactly 1."""
    counts_a = np.asarray(counts, float)
    if counts_a.sum() <= 0:
        raise ConfigError("reweighting needs at least one training image")
    share = counts_a / counts_a.sum()
    tgt = np.full(len(counts), 1.0 / len(counts)) if target is None else np.asarray(target, float)
    if len(tgt) != len(counts):
        raise ConfigError(f"method.target has {len(tgt)} values for {len(counts)} groups")
    if np.any((share == 0) & (tgt > 0)):
        raise ConfigError("reweighting: a group with a positive target has no training images")
    w = np.divide(tgt, share, out=np.zeros_like(tgt), where=share > 0)
    return w / float((share * w).sum())


class ReweightObjective(Objective):
    name = "reweight"

    def __init__(self, target: list[float] | None = None, balance: str = "weights") -> None:
        if balance not in ("weights", "resample"):
            raise ConfigError(f"method.balance: weights or resample, got {balance!r}")
        self.target = target
        self.balance = balance
        self.weights: torch.Tensor | None = None

    @classmethod
    def from_config(cls, m) -> "ReweightObjective":
        return cls(m.target, getattr(m, "balance", "weights"))

    def draw_probabilities(self, train_groups: torch.Tensor):
        """With ``balance="resample"``: image i drawn with probability w(g_i) / sum_j w(g_j)."""
        if self.balance != "resample":
            return None
        w = self.weights.numpy().astype(np.float64)[np.asarray(train_groups)]
        return w / w.sum()

    def setup(self, info: DataInfo) -> None:
        super().setup(info)
        self.weights = torch.tensor(group_weights(info.group_counts, self.target), dtype=torch.float32)

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        per_sample, _, _, _ = self.per_sample_denoise(unet, batch, noise_scheduler, generator)
        if self.balance == "resample":  # the batch was drawn at the target's mix already
            total = per_sample.mean()
            return LossOutput(total, {"denoise": total.detach(), "weighted": total.detach()})
        w = self.weights.to(per_sample.device)[batch["group"]]
        total = (w * per_sample).mean()
        return LossOutput(total, {"denoise": per_sample.mean().detach(), "weighted": total.detach()})
