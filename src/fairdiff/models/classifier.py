"""Classifier architectures shared by methods and judges: images in [-1, 1] -> (logits, penultimate features).

- :class:`FeatureClassifier`: ``body`` -> ``features`` -> ``head``; ``forward_features`` gives both outputs
  (alignment fine-tuning compares the features, the judges use them for domain FID and the manifold test).
- :class:`DomainCNN`: the small CNN of the evaluation judge (``evaluation/judges/domain.py``), a diffusers
  model so that its cache is written with ``save_pretrained`` and read with ``from_pretrained``.

The loop that fits any of them lives in :mod:`fairdiff.models.classifier_fit`. The judges themselves (the
uint8-image interface, the cached domain CNN, ONNX, TorchScript, Inception features) live in
:mod:`fairdiff.evaluation.judges`.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class FeatureClassifier(nn.Module):
    """``body`` -> ``features`` (penultimate) -> ``head`` (logits); subclasses build the three parts."""

    body: nn.Module
    features: nn.Module
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[N, K]``, penultimate features ``[N, D]``) of images ``x`` in [-1, 1]."""
        f = self.features(self.body(x))
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class DomainCNN(FeatureClassifier, ModelMixin, ConfigMixin):
    """A small CNN: 3 conv layers -> 2x2 pooled map -> ``feature_dim`` penultimate features -> K logits."""

    @register_to_config
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = 64) -> None:
        super().__init__()
        w = width
        # pool early: the first layer is the only one at full resolution, which keeps CPU training to seconds
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)
