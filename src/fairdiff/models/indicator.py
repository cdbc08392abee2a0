"""A small MLP classifier over a flattened tensor (used by DDM as its "latent space indicator")."""

from __future__ import annotations

from torch import nn


class MLPClassifier(nn.Module):
    """``flatten -> [Linear -> ReLU] * len(widths) -> Linear(K)`` over any ``[B, ...]`` input of ``in_features``."""

    def __init__(self, in_features: int, num_classes: int, widths: tuple[int, ...] | list[int] = (1024, 512)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)
        self.config = {"in_features": in_features, "num_classes": num_classes, "widths": list(widths)}

    def forward(self, x):
        return self.net(x)
