"""The data order of training: a function of (seed, position), so a resumed run continues where it stopped."""

from __future__ import annotations

import numpy as np
import torch

from fairdiff.utils.seed import derive_seed


def batch_indices(n: int, batch_size: int, position: int, seed: int) -> np.ndarray:
    """Indices of the ``batch_size`` examples at ``position`` in an endless stream of seeded epochs."""
    out = []
    start = position * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start, n)
        perm = np.random.default_rng(derive_seed(seed, "epoch", epoch)).permutation(n)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take.tolist())
        start += len(take)
    return np.asarray(out, dtype=np.int64)


def drawn_indices(probabilities: np.ndarray, batch_size: int, position: int, seed: int) -> np.ndarray:
    """Indices of the batch at ``position`` drawn with replacement, image i with ``probabilities[i]`` (an
    objective's :meth:`draw_probabilities`); a function of (seed, position) alone, so a resumed run draws on."""
    rng = np.random.default_rng(derive_seed(seed, "drawn", position))
    return rng.choice(len(probabilities), size=batch_size, replace=True, p=probabilities).astype(np.int64)


class DeviceBatches:
    """:func:`batch_indices` served from the accelerator (``train.data_on_device``).

    Each epoch's permutation (the same one ``batch_indices`` draws) is copied to ``device`` once, so picking a
    batch is a slice there, with no host work or host->device copy per step. Only the newest epochs are kept.
    """

    def __init__(self, n: int, seed: int, device: torch.device) -> None:
        self.n, self.seed, self.device = n, seed, device
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                del self._perms[min(self._perms)]
            perm = np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(self.n)
            self._perms[epoch] = torch.from_numpy(perm).to(self.device)
        return self._perms[epoch]

    def __call__(self, batch_size: int, position: int) -> torch.Tensor:
        """The indices ``batch_indices(n, batch_size, position, seed)`` gives, as a tensor on ``device``."""
        parts, start, need = [], position * batch_size, batch_size
        while need:
            epoch, offset = divmod(start, self.n)
            take = min(need, self.n - offset)
            parts.append(self._perm(epoch)[offset : offset + take])
            start, need = start + take, need - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)
