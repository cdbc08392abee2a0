"""h-space access: read or edit the output of a U-Net's middle (bottleneck) block with forward hooks.

"h-space" is the tensor the middle block hands to the up path. Distribution guidance reads it to predict
attributes and edits it to steer them. Both diffusers ``UNet2DModel`` and ``UNet2DConditionModel`` expose the block
as ``unet.mid_block``; a forward hook on it sees (and may replace) its output, so no diffusers code is copied.

When no U-Net is at hand (the guidance only gets a ``denoise`` function from the sampler), ``unet=None`` hooks
every diffusers middle block called inside the context, via a process-wide module hook that filters by class
name (``UNetMidBlock*``); only one U-Net runs per denoiser call, so this finds the same tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HFn = Callable[[torch.Tensor], torch.Tensor]


def mid_block(unet: nn.Module) -> nn.Module:
    """The middle block of a diffusers U-Net (``unet.mid_block``); raises if the model has none."""
    block = getattr(unet, "mid_block", None)
    if block is None:
        raise ValueError(f"{type(unet).__name__} has no mid_block, so it has no h-space")
    return block


def is_mid_block(module: nn.Module) -> bool:
    """True for diffusers' middle-block classes (UNetMidBlock2D, UNetMidBlock2DCrossAttn, ...)."""
    return type(module).__name__.startswith("UNetMidBlock")


def _split(output) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """The h tensor inside a block output and a function that rebuilds the output around a new h."""
    if torch.is_tensor(output):
        return output, lambda h: h
    if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        return output[0], lambda h: (h, *output[1:])
    raise TypeError(f"unexpected middle-block output of type {type(output).__name__}")


@contextmanager
def _hook(unet: nn.Module | None, fn: Callable[[nn.Module, tuple, object], object]) -> Iterator[None]:
    if unet is not None:
        handle = mid_block(unet).register_forward_hook(fn)
    else:

        def filtered(module, args, output):
            return fn(module, args, output) if is_mid_block(module) else None

        handle = nn.modules.module.register_module_forward_hook(filtered)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture_h(unet: nn.Module | None = None) -> Iterator[list[torch.Tensor]]:
    """Collect h from every U-Net call inside the context into the yielded list (tensors as produced, not copied)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        seen.append(_split(output)[0])

    with _hook(unet, hook):
        yield seen


@contextmanager
def edit_h(fn: HFn, unet: nn.Module | None = None) -> Iterator[None]:
    """Replace h by ``fn(h)`` in every U-Net call inside the context; the up path continues from the new h."""

    def hook(module, args, output):
        h, rebuild = _split(output)
        return rebuild(fn(h))

    with _hook(unet, hook):
        yield
