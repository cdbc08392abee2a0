"""The copying check of a trained run (``metrics.copying``): generated images against the run's own training set.

Lives beside ``evaluate_run`` because only a run knows which images its model saw (the biased training split, or the
reference set for ``data.train_on=reference``); a plain samples folder has no training set to compare with.
"""

from __future__ import annotations

import numpy as np

from fairdiff.evaluation.samples import to_uint8
from fairdiff.metrics.copying import copy_metrics


def run_copy_check(images: np.ndarray, data_cfg, n: int, quantile: float = 0.05, seed: int = 0) -> dict | None:
    """``copy_metrics`` for the first ``n`` of ``images`` (uint8 ``[N, C, H, W]``) against the training images that
    ``data_cfg`` selects and its balanced held-out images, all quantised alike. None when ``n`` is 0 or the
    images do not match the data's shape (e.g. samples of a latent model decoded at another size)."""
    if n <= 0 or len(images) == 0:
        return None
    from fairdiff.data import prepare_data

    pd = prepare_data(data_cfg)
    train, held = to_uint8(pd.train_images), to_uint8(pd.heldout_images)
    if tuple(train.shape[1:]) != tuple(images.shape[1:]) or len(held) == 0:
        return None
    out = copy_metrics(images[:n].astype(np.float32), train.astype(np.float32), held.astype(np.float32),
                       train_groups=pd.train_groups.numpy(), heldout_groups=pd.heldout_groups.numpy(),
                       quantile=quantile, seed=seed)
    out["space"] = "pixels (uint8, L2)"
    out["trained_on"] = getattr(data_cfg, "train_on", "train")
    return out
