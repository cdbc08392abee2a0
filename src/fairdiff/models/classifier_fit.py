"""The one routine that fits a classifier: Adam (+ optional one-cycle LR), cross-entropy, one CPU thread.

Who draws the batches differs, the loop does not: the evaluation judge (``evaluation/judges/domain.py``) walks
shuffled epochs with random pixel shifts (:func:`shuffled_batches`), alignment fine-tuning's training
classifier (``methods/align.py``) draws class-balanced batches with Gaussian noise (:func:`balanced_batches`).
A batch source is any ``() -> (images, labels)`` callable; it owns its ``torch.Generator``, so the random
numbers a fit consumes are exactly those its batch source draws (plus the caller's seeded model init).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Batches = Callable[[], "tuple[torch.Tensor, torch.Tensor]"]


def fit_classifier(model: nn.Module, batches: Batches, steps: int, lr: float, *, one_cycle_pct: float | None = None,
                   desc: str = "training classifier", progress: bool = False) -> nn.Module:
    """Fit ``model`` for ``steps`` Adam steps of cross-entropy on ``batches()``; returns it in eval mode.

    ``one_cycle_pct``: warm-up fraction of a one-cycle LR schedule peaking at ``lr`` (None: constant ``lr``).
    Runs on one thread: nets this small train faster so, and far faster on a busy machine.
    """
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = None
    if one_cycle_pct is not None:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=one_cycle_pct)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            xb, yb = batches()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def random_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation (replicate-free: pad with background -1, then crop)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            sel = (dy == i) & (dx == j)
            if sel.any():
                out[sel] = xp[sel, :, i : i + h, j : j + w]
    return out


def shuffled_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, g: torch.Generator, *,
                     shift: bool = False) -> Batches:
    """Batches walking a random permutation, reshuffled when the next batch would not fit; optional
    :func:`random_shift`. The first permutation is drawn here, the rest as batches are taken."""
    n = len(images)
    state = {"perm": torch.randperm(n, generator=g), "pos": 0}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        if state["pos"] + batch_size > n:
            state["perm"], state["pos"] = torch.randperm(n, generator=g), 0
        idx = state["perm"][state["pos"] : state["pos"] + batch_size]
        state["pos"] += batch_size
        xb, yb = images[idx], labels[idx]
        if shift:
            xb = random_shift(xb, g)
        return xb, yb

    return next_batch


def balanced_batches(images: torch.Tensor, labels: torch.Tensor, pools: list[torch.Tensor], batch_size: int,
                     g: torch.Generator, *, noise_std: float = 0.0) -> Batches:
    """Class-balanced batches: ``batch_size // len(pools)`` (at least 1) indices drawn with replacement from
    each pool of indices, plus Gaussian noise of ``noise_std`` on the images."""
    per = max(1, batch_size // len(pools))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.cat([p[torch.randint(0, len(p), (per,), generator=g)] for p in pools])
        xb = images[idx]
        if noise_std:
            xb = xb + noise_std * torch.randn(xb.shape, generator=g)
        return xb, labels[idx]

    return next_batch
