"""Pieces of one optimizer step shared by the trainers (pixel/latent and Stable-Diffusion LoRA)."""

from __future__ import annotations

import numpy as np
import torch


def record_parts(window: dict[str, list], out, sync: bool = True) -> None:
    """Append a LossOutput's total and parts to the running log window.

    ``sync=False`` keeps detached tensors instead of Python floats, so recording does not wait for the
    accelerator (a ``float()`` of a GPU tensor blocks the host every micro-batch); :func:`window_means` turns
    the window into floats once per log interval. The logged numbers are the same either way.
    """
    for k, v in {"loss": out.total, **out.parts}.items():
        if torch.is_tensor(v):
            window.setdefault(k, []).append(float(v.detach()) if sync else v.detach())
        else:
            window.setdefault(k, []).append(float(v))


def window_means(window: dict[str, list]) -> dict[str, float]:
    """The mean of each logged part over the window, as floats (one device->host copy per part)."""
    out = {}
    for k, vals in window.items():
        tensors = [v for v in vals if torch.is_tensor(v)]
        if tensors:  # one transfer for all of them; a float32 tensor's value is exactly its float()
            dev = tensors[0].device
            flat = torch.stack([t.reshape(()).float().to(dev) for t in tensors]).cpu().tolist()
            it = iter(flat)
            vals = [next(it) if torch.is_tensor(v) else v for v in vals]
        out[k] = float(np.mean(vals))
    return out


def optimizer_step(accelerator, params, optimizer, lr_sched, tc) -> None:
    """Clip (by norm or value, as ``tc.clip_mode`` says), step the optimizer and LR schedule, clear gradients."""
    if tc.clip_mode == "norm":
        accelerator.clip_grad_norm_(params, tc.max_grad_norm)
    elif tc.clip_mode == "value":
        accelerator.clip_grad_value_(params, tc.max_grad_norm)
    optimizer.step()
    lr_sched.step()
    optimizer.zero_grad(set_to_none=True)
