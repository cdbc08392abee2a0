"""The one denoising loop, for pixel, latent, class-conditional and prompt-conditioned (Stable Diffusion) models.

The model is a denoiser (:mod:`fairdiff.sampling.denoisers`), called as ``denoiser(x, t, **cond)``; a plain
diffusers ``UNet2DModel`` is wrapped as one. ``cond`` holds per-image conditioning (class labels, text embeddings,
the two branches of classifier-free guidance), sliced to each batch.

Every image has its own seed: its starting noise and every stochastic step draw from a generator seeded by that
seed alone, so image i is the same whatever the batch size or the number of images asked for.

A guidance wraps the denoiser call (k-diffusion style): it gets the step's position, the timestep, the current
sample and a function that evaluates the denoiser, and returns the model output to use. Methods that steer
sampling (e.g. h-space distribution guidance) plug in here; with no guidance the denoiser is called directly.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fairdiff.sampling.denoisers import UNetDenoiser

DenoiseFn = Callable[[torch.Tensor], torch.Tensor]
PRECISIONS = ("fp32", "bf16")
log = logging.getLogger(__name__)


class Guidance(Protocol):
    """``guidance(step_index, t, sample, denoise) -> model_output`` (denoise(sample) gives the plain output)."""

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise: DenoiseFn) -> torch.Tensor:
        ...


@torch.no_grad()
def _no_grad_call(fn: DenoiseFn, x: torch.Tensor) -> torch.Tensor:
    return fn(x)


def sample(
    model,
    scheduler,
    seeds: Sequence[int],
    *,
    batch_size: int = 256,
    num_steps: int = 50,
    class_labels: Sequence[int] | torch.Tensor | None = None,
    cond: Mapping | None = None,
    shape: Sequence[int] | None = None,
    guidance: Guidance | None = None,
    eta: float | Sequence[float] = 0.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    clip_output: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str = "default",
) -> torch.Tensor:
    """Generate one image (or latent) per seed; returns a float tensor on the CPU, ``[N, C, H, W]``, in [-1, 1]
    unless ``clip_output=False`` (latents, decoded afterwards).

    ``model``: a denoiser (``denoiser(x, t, **cond)``, with a ``unet`` attribute and a ``sample_shape`` unless
    ``shape`` is given) or a diffusers ``UNet2DModel``. ``scheduler`` is a diffusers scheduler (DDIM or DDPM).
    ``cond``: per-image conditioning, ``{name: tensor [N, ...]}`` (or nested dicts of such, e.g. the ``cond`` /
    ``uncond`` branches of :class:`~fairdiff.sampling.denoisers.CFGDenoiser`), each batch gets its rows;
    ``class_labels`` (one per seed) is short for ``cond={"class_labels": ...}``. ``guidance`` may need gradients,
    so the loop only disables autograd around plain denoiser calls.

    ``eta``: DDIM's noise, one number for every step or one per step (``num_steps`` of them, first step first):
    e.g. ancestral steps while the image's coarse form is decided, deterministic ones after.

    Speed options (docs/performance.md), none of which changes which noise an image starts from:
    ``precision='bf16'`` runs the U-Net under bf16 autocast (the sample and the scheduler step stay fp32);
    ``channels_last`` converts the U-Net's weights to NHWC in place (same values, the layout GPUs prefer);
    ``compile`` runs a ``torch.compile``-d U-Net (``compile_mode`` as torch names it; unguided sampling of a
    plain U-Net only, a guidance's hooks and gradients get the plain module).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    den = model if not isinstance(model, nn.Module) else UNetDenoiser(model)
    unet: nn.Module = den.unet
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    cudagraphs = False
    if compile and (guidance is not None or type(den) is not UNetDenoiser):
        log.warning("sample: compile is ignored with a guidance or a conditioned denoiser")
    elif compile:
        den = UNetDenoiser(torch.compile(unet, mode=compile_mode))
        cudagraphs = compile_mode in ("reduce-overhead", "max-autotune")

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
    shape = tuple(shape) if shape is not None else tuple(den.sample_shape)
    seeds = [int(s) for s in seeds]
    cond = dict(cond or {})
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long)
        if len(class_labels) != len(seeds):
            raise ValueError("class_labels needs one label per seed")
        cond["class_labels"] = class_labels
    _check_rows(cond, len(seeds))
    etas = [float(e) for e in eta] if hasattr(eta, "__len__") else [float(eta)] * num_steps
    if len(etas) != num_steps:
        raise ValueError(f"eta: one number, or one per step ({num_steps}), got {len(etas)}")
    was_training = unet.training
    unet.eval()
    out = []
    n_batches = math.ceil(len(seeds) / batch_size)
    bar = tqdm(total=len(seeds), desc="sampling", unit="img", disable=not progress, leave=False)
    try:
        for b in range(n_batches):
            bs = seeds[b * batch_size : (b + 1) * batch_size]
            gens = [torch.Generator("cpu").manual_seed(s) for s in bs]
            x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype)
            cond_b = _rows(cond, slice(b * batch_size, (b + 1) * batch_size), device)
            scheduler.set_timesteps(num_steps)
            x = x * scheduler.init_noise_sigma
            for i, t in enumerate(scheduler.timesteps):
                tt = t.to(device) if torch.is_tensor(t) else torch.tensor(t, device=device)
                tb = tt.expand(x.shape[0])

                def denoise(inp: torch.Tensor, _tb=tb, _cond=cond_b) -> torch.Tensor:
                    inp = scheduler.scale_model_input(inp, _tb[0])
                    if cudagraphs:  # each call is a new step: the previous step's graph outputs are consumed
                        torch.compiler.cudagraph_mark_step_begin()
                    with autocast():
                        eps = den(inp, _tb, **_cond)
                    return eps.to(inp.dtype)  # no-op in fp32; bf16 output back to the sample's dtype

                if guidance is None:
                    eps = _no_grad_call(denoise, x)
                else:
                    eps = guidance(i, tb, x, denoise)
                with torch.no_grad():
                    x = scheduler.step(eps.detach(), t, x, **_step_kwargs(scheduler, etas[i], gens)).prev_sample
            out.append(x.float().clamp(-1, 1).cpu() if clip_output else x.float().cpu())
            bar.update(len(bs))
    finally:
        bar.close()
        unet.train(was_training)
    return torch.cat(out)


def _step_kwargs(scheduler, eta: float, gens: list[torch.Generator]) -> dict:
    """The keyword arguments this scheduler's ``step`` takes: ``eta`` (DDIM) and per-image ``generator``s."""
    names = scheduler.step.__code__.co_varnames
    kw: dict = {}
    if "eta" in names:
        kw["eta"] = eta
    if "generator" in names:
        kw["generator"] = gens
    return kw


def _check_rows(cond: Mapping, n: int, name: str = "cond") -> None:
    for k, v in cond.items():
        if isinstance(v, Mapping):
            _check_rows(v, n, f"{name}.{k}")
        elif len(v) != n:
            raise ValueError(f"{name}.{k} has {len(v)} rows for {n} seeds (one per seed)")


def _rows(cond: Mapping, sl: slice, device: torch.device) -> dict:
    """The batch's rows of every per-image conditioning tensor, on the device (nested dicts kept)."""
    return {k: _rows(v, sl, device) if isinstance(v, Mapping) else v[sl].to(device) for k, v in cond.items()}
