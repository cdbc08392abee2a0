"""A small noise-aware classifier ``d(x_t, t)``: the density-ratio discriminator of methods/tiw.py (one logit)
and the group classifier of classifier guidance toward a target (methods/classifier_guidance.py, ``out_dim`` = K
logits, one per group).

With one output it gives one logit per input. Trained with BCE on reference (1) against training (0) images
noised to random timesteps in balanced batches, its optimum is ``sigmoid(logit) = p_ref^t / (p_ref^t + p_bias^t)``,
so the logit itself estimates ``log p_ref^t(x_t) - log p_bias^t(x_t)``.

Two bodies share one timestep embedding: a tiny conv net for images ``[B, C, H, W]`` and an MLP for flat vectors
``[B, D]`` (toy data). Activations are SiLU and normalisation is per sample (GroupNorm), so the logit is a smooth
function of each input alone: its input gradient (the score correction) is well defined and a batch never mixes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of integer (or real) timesteps ``t`` ``[B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class NoiseAwareDiscriminator(nn.Module):
    """``d(x_t, t)`` as a logit ``[B]``. ``in_shape`` is ``(C, H, W)`` (conv body) or ``(D,)`` (MLP body)."""

    def __init__(self, in_shape: tuple[int, ...] | list[int], width: int = 32, num_train_timesteps: int = 1000,
                 depth: int = 2, out_dim: int = 1) -> None:
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) not in (1, 3):
            raise ValueError(f"in_shape must be (C, H, W) or (D,), got {in_shape}")
        self.kind = "conv" if len(in_shape) == 3 else "mlp"
        self.width = int(width)
        self.temb_dim = max(16, self.width)
        if int(out_dim) < 1:
            raise ValueError(f"out_dim must be at least 1, got {out_dim}")
        self.out_dim = int(out_dim)
        self.config = {"kind": self.kind, "in_shape": list(in_shape), "width": self.width,
                       "num_train_timesteps": int(num_train_timesteps), "depth": int(depth)}
        if self.out_dim > 1:
            self.config["out_dim"] = self.out_dim
        w = self.width
        self.time_mlp = nn.Sequential(nn.Linear(self.temb_dim, w), nn.SiLU(), nn.Linear(w, w))
        if self.kind == "conv":
            c = in_shape[0]
            self.conv_in = nn.Conv2d(c, w, 3, padding=1)
            self.t_in = nn.Linear(w, w)
            self.norm_in = nn.GroupNorm(_groups(w), w)
            downs, norms, tprojs = [], [], []
            ch = w
            for _ in range(depth):
                downs.append(nn.Conv2d(ch, 2 * w, 3, stride=2, padding=1))
                norms.append(nn.GroupNorm(_groups(2 * w), 2 * w))
                tprojs.append(nn.Linear(w, 2 * w))
                ch = 2 * w
            self.downs, self.norms, self.tprojs = nn.ModuleList(downs), nn.ModuleList(norms), nn.ModuleList(tprojs)
            self.head = nn.Sequential(nn.Linear(ch + w, w), nn.SiLU(), nn.Linear(w, self.out_dim))
        else:
            d = in_shape[0]
            layers: list[nn.Module] = []
            prev = d + w
            for _ in range(max(1, depth)):
                layers += [nn.Linear(prev, w), nn.SiLU()]
                prev = w
            layers.append(nn.Linear(prev, self.out_dim))
            self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The logit of "reference" for each noisy input ``x`` at timestep ``t`` (``[B]`` ints): ``[B]``; with
        ``out_dim`` K > 1 the K logits ``[B, K]``."""
        temb = self.time_mlp(timestep_embedding(t.reshape(-1).to(x.device), self.temb_dim).to(x.dtype))
        act = nn.functional.silu
        if self.kind == "conv":
            h = act(self.norm_in(self.conv_in(x) + self.t_in(temb)[:, :, None, None]))
            for down, norm, tp in zip(self.downs, self.norms, self.tprojs):
                h = act(norm(down(h)) + tp(temb)[:, :, None, None])
            h = h.mean(dim=(2, 3))
            out = self.head(torch.cat([h, temb], dim=1))
        else:
            out = self.body(torch.cat([x.flatten(1), temb], dim=1))
        return out.squeeze(1) if self.out_dim == 1 else out


def load_discriminator(folder: str | Path, device: str | torch.device = "cpu") -> NoiseAwareDiscriminator:
    """A saved discriminator (``model/discriminator/``: ``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    disc = NoiseAwareDiscriminator(cfg["in_shape"], cfg["width"], cfg["num_train_timesteps"], cfg.get("depth", 2),
                                   cfg.get("out_dim", 1))
    disc.load_state_dict(load_file(str(folder / "model.safetensors")))
    return disc.to(device).eval()


def save_discriminator(disc: NoiseAwareDiscriminator, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (what :func:`load_discriminator` reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(disc.config, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in disc.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder
