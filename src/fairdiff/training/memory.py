"""Fail fast on what cannot fit: the memory of one training batch, estimated before anything is loaded or trained.

A batch of ``train.batch_size`` images at ``data.resolution`` is refused with one line when its estimate exceeds
the memory of the machine (the free memory of the CUDA device when training runs there, else the available host
memory: psutil, or ``/proc/meminfo``), instead of failing after minutes of allocation or being killed.

The estimate is deliberately low (a run it refuses cannot fit; one it passes may still be tight):

- activations kept for the backward pass: ``batch * sum_l width_l * (side / 2**l)**2 * (layers + 1) * FACTOR``
  bytes-per-value (4 for fp32, 2 for mixed precision), ``side`` the U-Net's input side (the resolution, or the
  latent side behind a VAE). ``FACTOR`` is measured: the tensors autograd saves for diffusers' U-Nets are 19-49
  values per ``width * side**2 * (layers + 1)`` (tiny / small / base presets, 16-64 px), falling with the side;
  16 is below every measurement. Gradient checkpointing keeps a quarter;
- parameters: weights, gradients, AdamW's two moments and the EMA (5 copies) of what is trained, one copy of
  what is frozen (a VAE, an SD U-Net under LoRA);
- the training tensor (``data.size`` images) when its size is known, on the host.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fairdiff.config import RunConfig
from fairdiff.errors import ConfigError

FACTOR = 16  # saved values per (width * side**2 * (layers + 1)); below every measured U-Net (see above)
GiB = 1024**3


class BatchTooLargeError(ConfigError):
    """A training batch that cannot fit in the machine's memory."""


@dataclass
class Estimate:
    activations: int  # bytes
    parameters: int  # bytes (weights, gradients, optimizer, EMA)
    data: int  # bytes of the training tensor on the host (0 when unknown)
    side: int  # the U-Net's input side
    channels: int

    @property
    def device_bytes(self) -> int:
        return self.activations + self.parameters


def available_memory() -> tuple[int | None, str]:
    """``(bytes, what)``: the free memory of the CUDA device training would use, else the host's available
    memory; ``None`` when it cannot be read."""
    import torch

    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        try:
            free, _total = torch.cuda.mem_get_info()
            return int(free), f"free on {torch.cuda.get_device_name()}"
        except RuntimeError:  # pragma: no cover - a device that cannot report
            pass
    return host_available(), "available CPU memory"


def host_available() -> int | None:
    """Available host memory in bytes (psutil, else /proc/meminfo), or None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is in the venv
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def _weights_bytes(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    except OSError:
        return 0


def _default_channels(cfg: RunConfig) -> int:
    if cfg.data.channels:
        return cfg.data.channels
    return 1 if cfg.data.source in ("digits", "mnist", "synthetic") else 3


def _preset_params(preset: str, channels: int) -> int:
    """Parameters of a U-Net preset, counted on the meta device (nothing allocated)."""
    import torch

    from fairdiff.models.unet import build_unet

    try:
        with torch.device("meta"):
            unet = build_unet(preset, 32, channels)
        return sum(p.numel() for p in unet.parameters())
    except Exception:  # noqa: BLE001 - an estimate only: an unknown preset is refused by the adapter itself
        return 0


def estimate_training_memory(cfg: RunConfig, sd_path: str | Path | None = None) -> Estimate:
    """The estimate of one training micro-batch of ``cfg`` (a pixel or latent U-Net; an SD U-Net under LoRA when
    ``sd_path`` names the SD folder)."""
    from fairdiff.models.unet import UNET_PRESETS

    t = cfg.train
    per_value = 2 if t.mixed_precision in ("fp16", "bf16") else 4
    res = cfg.data.resolution
    frozen = 0
    trained = 0
    if sd_path is not None:
        sd = Path(sd_path)
        uc = _read_config(sd / "unet" / "config.json")
        vc = _read_config(sd / "vae" / "config.json")
        widths = list(uc.get("block_out_channels") or (320, 640, 1280, 1280))
        layers = int(uc.get("layers_per_block") or 2)
        channels = int(uc.get("in_channels") or 4)
        side = max(1, res // 2 ** (len(vc.get("block_out_channels") or (1, 2, 3, 4)) - 1))
        frozen = sum(_weights_bytes(sd / c) for c in ("unet", "vae", "text_encoder"))
    else:
        p = UNET_PRESETS.get(cfg.model.preset, UNET_PRESETS["tiny"])
        widths, layers = list(p["block_out_channels"]), int(p["layers_per_block"])
        channels, side = _default_channels(cfg), res
        if cfg.model.vae:
            from fairdiff.models.vae import vae_folder

            try:
                vf = vae_folder(cfg.model.vae)
            except Exception:  # noqa: BLE001 - the adapter refuses a missing VAE with its own line
                vf = None
            if vf is not None:
                vc = _read_config(vf / "config.json")
                side = max(1, res // 2 ** (len(vc.get("block_out_channels") or (1,)) - 1))
                channels = int(vc.get("latent_channels") or cfg.model.vae_latent_channels)
                frozen = _weights_bytes(vf)
        trained = _preset_params(cfg.model.preset, channels) * 4
    per_sample = sum(w * (side / 2**lvl) ** 2 for lvl, w in enumerate(widths)) * (layers + 1) * FACTOR * per_value
    if t.gradient_checkpointing:
        per_sample /= 4
    activations = int(min(per_sample * t.batch_size, 2**62))
    parameters = 5 * trained + frozen
    n = cfg.data.size if cfg.data.size else (cfg.data.synthetic_size if cfg.data.source == "synthetic" else 0)
    data = int(n * _default_channels(cfg) * res * res * 4)
    return Estimate(activations, parameters, data, int(side), channels)


def _gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB" if b < 1024 * GiB else f"{b / 1024 / GiB:.0f} TiB"


def check_training_memory(cfg: RunConfig, sd_path: str | Path | None = None,
                          limit: tuple[int | None, str] | None = None) -> Estimate:
    """Refuse (one line: the estimate and the limit) a training batch that cannot fit; returns the estimate.

    ``limit``: ``(bytes, what)`` instead of :func:`available_memory` (tests)."""
    est = estimate_training_memory(cfg, sd_path)
    avail, what = limit if limit is not None else available_memory()
    if avail is None:
        return est
    on_host = what.startswith("available CPU")
    need = est.device_bytes + (est.data if on_host else 0)
    if need > avail:
        data = f", data {_gib(est.data)}" if est.data and on_host else ""
        hint = "" if cfg.train.gradient_checkpointing else " (or use train.gradient_checkpointing=true)"
        raise BatchTooLargeError(
            f"train.batch_size={cfg.train.batch_size} at data.resolution={cfg.data.resolution}: one training batch "
            f"needs about {_gib(need)} (activations {_gib(est.activations)}, parameters and optimizer "
            f"{_gib(est.parameters)}{data}) but {_gib(avail)} is {what}; lower train.batch_size or "
            f"data.resolution{hint}")
    host = None if on_host else host_available()
    if host is not None and est.data > host:
        raise BatchTooLargeError(
            f"data.size={cfg.data.size} at data.resolution={cfg.data.resolution}: the training images need about "
            f"{_gib(est.data)} but {_gib(host)} is available CPU memory; lower data.size or data.resolution")
    return est


def check_sampling_memory(batch_size: int, channels: int, side: int, widths: list[int], what: str = "sample",
                          limit: tuple[int | None, str] | None = None) -> None:
    """The same check for a sampling batch (no gradients: a few live activations of the widest level)."""
    per_sample = max(w * (side / 2**lvl) ** 2 for lvl, w in enumerate(widths)) * 4 * 4 + channels * side * side * 4
    need = per_sample * batch_size
    avail, where = limit if limit is not None else available_memory()
    if avail is not None and need > avail and math.isfinite(need):
        raise BatchTooLargeError(f"{what}.batch_size={batch_size} at {side}x{side}: one batch needs about {_gib(need)} "
                           f"but {_gib(avail)} is {where}; lower {what}.batch_size")
