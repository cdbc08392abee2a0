"""Reproducible randomness.

Training and sampling draw their noise from generators derived from (seed, purpose, index), so a result
depends on the seed and the position in the run, never on how the run was split into processes or resumed.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (e.g. ``derive_seed(seed, "noise", step, rank)``)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The global generators' states: torch CPU/CUDA as uint8 tensors, numpy and Python as JSON-ready values."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only for the devices present)."""
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"].to(torch.uint8), i)
    n = meta["numpy"]
    np.random.set_state((str(n["kind"]), np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = meta["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"]), p["gauss_next"]))
