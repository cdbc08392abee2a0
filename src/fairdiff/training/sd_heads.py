"""Fitting distribution guidance's per-step heads on a text-to-image model's own generations, labelled by a judge.

No labelled data is needed: the pipeline generates ``n`` images for each prompt (classifier-free guidance in the
loop, as it will sample later) while the conditional branch's h (the U-Net middle block's output) is recorded at
every DDIM step; the judge labels each final image (pseudo-labels), and one class-balanced linear head per step
position is fitted on (h at that step, the final image's label) by the one heads fitter,
:func:`fairdiff.training.heads.fit_step_heads`.
A held-out share of the images gives each step's balanced accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.heads import GuidanceHeads, HeadsConfig, model_fingerprint
from fairdiff.sampling.sd_guided import POOLS, sd_generate
from fairdiff.training.heads import fit_step_heads, split_heldout

MODE = "generated"  # HeadsConfig.mode of heads fitted on the model's own judged generations


@dataclass
class SDHeadsResult:
    heads: GuidanceHeads
    heldout_accuracy: list[float]  # balanced accuracy per step position (empty without a held-out part)
    train_accuracy: list[float]
    label_shares: dict[str, list[float]]  # prompt -> the judge's group shares of its generations
    n_train: int
    n_heldout: int
    seconds: float
    info: dict = field(default_factory=dict)


def fit_sd_heads(
    pipe,
    prompts: Sequence[str],
    judge: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    *,
    n: int = 64,
    steps: int = 25,
    cfg_scale: float = 7.5,
    size: int,
    pool: str = "mean",
    heldout: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
    weight_decay: float = 1e-3,
    log: Callable[[str], None] = lambda _m: None,
    fitted_on: dict | None = None,
) -> SDHeadsResult:
    """Generate ``n`` images per prompt (image i from seed + i), label them with ``judge`` (uint8 images ->
    group indices), fit one head per step on the recorded h; ``heldout`` of the images (a seeded random part)
    are kept out of fitting and scored. The heads record ``fitted_on`` (default: the fingerprint of the pipeline's
    U-Net weights file; give :func:`~fairdiff.models.heads.model_fingerprint` with the LoRA for a fine-tuned run).
    """
    if pool not in POOLS:
        raise FairdiffError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if not 0 <= heldout < 1:
        raise FairdiffError(f"--heldout must be in [0, 1), got {heldout}")
    start = time.time()
    feats, labels, shares = [], [], {}
    timesteps: list[int] = []
    h_shape: list[int] = []
    for j, prompt in enumerate(prompts, 1):
        g = sd_generate(pipe, prompt, list(range(seed, seed + n)), size=size, steps=steps, cfg_scale=cfg_scale,
                        record=pool, batch_size=batch_size)
        lab = np.asarray(judge(g.images)).astype(np.int64).reshape(-1)
        if len(lab) != len(g.images) or lab.min() < 0 or lab.max() >= num_classes:
            raise FairdiffError(f"the judge gave labels outside 0..{num_classes - 1} (or the wrong number)")
        shares[prompt] = np.bincount(lab, minlength=num_classes).astype(float) / len(lab)
        log(f"[{j}/{len(prompts)}] {prompt}: judged shares {np.round(shares[prompt], 3).tolist()}")
        feats.append(g.feats)
        labels.append(torch.from_numpy(lab))
        timesteps, h_shape = g.timesteps, g.h_shape
    x = torch.cat(feats, dim=1)  # [S, N, D]
    y = torch.cat(labels)
    train, held = split_heldout(torch.arange(len(y)), heldout, seed)
    n_held = len(held)
    counts = torch.bincount(y[train], minlength=num_classes)
    if (counts == 0).any():
        raise FairdiffError(f"the judge put the {len(train)} training images in groups with counts "
                            f"{counts.tolist()}: every group needs images; generate more (--n) or add prompts")
    cfg = HeadsConfig(attributes={"group": num_classes}, num_steps=steps, scheduler="ddim", timesteps=timesteps,
                      pool=pool, h_shape=h_shape, mode=MODE,
                      fitted_on=fitted_on if fitted_on is not None else model_fingerprint(pipe.unet))
    heads, tr, he = fit_step_heads(cfg, x[:, train], {"group": y[train]},
                                   heldout_feats=x[:, held] if n_held else None,
                                   heldout_labels={"group": y[held]} if n_held else None, weight_decay=weight_decay)
    tr_acc, he_acc = tr["group"], he["group"]
    return SDHeadsResult(heads, he_acc, tr_acc, {p: s.tolist() for p, s in shares.items()}, len(train), n_held,
                         time.time() - start)
