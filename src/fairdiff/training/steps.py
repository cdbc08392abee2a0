"""Pieces of one optimizer step shared by the trainers (pixel/latent and Stable-Diffusion LoRA)."""

from __future__ import annotations

import torch


def record_parts(window: dict[str, list[float]], out) -> None:
    """Append a LossOutput's total and parts to the running log window."""
    for k, v in {"loss": out.total, **out.parts}.items():
        window.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))


def optimizer_step(accelerator, params, optimizer, lr_sched, tc) -> None:
    """Clip (by norm or value, as ``tc.clip_mode`` says), step the optimizer and LR schedule, clear gradients."""
    if tc.clip_mode == "norm":
        accelerator.clip_grad_norm_(params, tc.max_grad_norm)
    elif tc.clip_mode == "value":
        accelerator.clip_grad_value_(params, tc.max_grad_norm)
    optimizer.step()
    lr_sched.step()
    optimizer.zero_grad(set_to_none=True)
