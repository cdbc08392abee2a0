"""The training state in a checkpoint, as safetensors and JSON only: nothing in a checkpoint is ever unpickled.

``checkpoint-N/`` holds

- ``trainer_state.json``: the optimizer step N;
- ``model.safetensors``: the denoiser; ``module-<name>.safetensors``: each objective module (e.g. ``indicator``);
- ``ema.safetensors`` + ``ema.json``: the EMA's shadow parameters, its decay, step and other scalars;
- ``optimizer.safetensors`` + ``optimizer.json``: every optimizer state tensor, flattened as ``<param>.<name>``,
  and the parameter groups plus any non-tensor state;
- ``scheduler.json``: the LR schedule; ``scaler.json``: the fp16 gradient scaler (mixed_precision=fp16 only);
- ``rng-<rank>.safetensors`` + ``rng-<rank>.json``: each process's torch CPU/CUDA generator states, and its numpy
  and Python generator states;
- ``files.json``: the size and SHA-256 of every file above, written last (see :mod:`fairdiff.training.checkpoint`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fairdiff.errors import RunDirError
from fairdiff.utils.io import read_json, write_json
from fairdiff.utils.seed import get_rng_state, set_rng_state

FILE_LIST = "files.json"
STATE_FILE = "trainer_state.json"
# every name a checkpoint may hold; anything else is refused before a byte of the checkpoint is read
ALLOWED = re.compile(
    r"^(trainer_state\.json|files\.json|model\.safetensors|module-[A-Za-z0-9_]+\.safetensors"
    r"|(ema|optimizer)\.(safetensors|json)|scheduler\.json|scaler\.json|rng-\d+\.(safetensors|json))$"
)


def _to_json(obj):
    """JSON-ready copy of a state's non-tensor part; tuples are kept as ``{"__tuple__": [...]}``."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON")


def _from_json(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(v) for v in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def save_training_state(folder: Path, *, step: int, modules: dict[str, torch.nn.Module], optimizer, lr_sched,
                        ema, scaler, rank: int, main: bool) -> None:
    """Write the state of this process into ``folder``: everything on the main process, RNG states on each."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = get_rng_state()
    save_file({k: _cpu(v) for k, v in tensors.items()}, str(folder / f"rng-{rank}.safetensors"))
    write_json(folder / f"rng-{rank}.json", meta)
    if not main:
        return
    for name, module in modules.items():
        save_file({k: _cpu(v) for k, v in module.state_dict().items()}, str(folder / f"{name}.safetensors"))
    opt = optimizer.state_dict()
    flat, rest = {}, {}
    for pid, entry in opt["state"].items():
        rest[str(pid)] = {k: v for k, v in entry.items() if not torch.is_tensor(v)}
        flat.update({f"{pid}.{k}": _cpu(v) for k, v in entry.items() if torch.is_tensor(v)})
    save_file(flat, str(folder / "optimizer.safetensors"))
    write_json(folder / "optimizer.json", {"param_groups": _to_json(opt["param_groups"]), "state": _to_json(rest)})
    write_json(folder / "scheduler.json", _to_json(lr_sched.state_dict()))
    if scaler is not None:
        write_json(folder / "scaler.json", _to_json(scaler.state_dict()))
    if ema is not None:
        sd = ema.state_dict()
        save_file({str(i): _cpu(p) for i, p in enumerate(sd["shadow_params"])}, str(folder / "ema.safetensors"))
        write_json(folder / "ema.json", _to_json({k: v for k, v in sd.items() if k != "shadow_params"}))
    write_json(folder / STATE_FILE, {"step": step})


def load_training_state(folder: Path, *, modules: dict[str, torch.nn.Module], optimizer, lr_sched, ema, scaler,
                        rank: int) -> int:
    """Restore what :func:`save_training_state` wrote (safetensors and JSON only); return the step.

    A checkpoint that does not fit this run (another architecture, a missing part) is one :class:`RunDirError`.
    """
    try:
        for name, module in modules.items():
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        flat = load_file(str(folder / "optimizer.safetensors"))
        meta = _from_json(read_json(folder / "optimizer.json"))
        state: dict[int, dict] = {int(pid): dict(entry) for pid, entry in meta["state"].items()}
        for key, t in flat.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = t
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        lr_sched.load_state_dict(_from_json(read_json(folder / "scheduler.json")))
        if scaler is not None:
            scaler.load_state_dict(_from_json(read_json(folder / "scaler.json")))
        if ema is not None:
            shadow = load_file(str(folder / "ema.safetensors"))
            sd = _from_json(read_json(folder / "ema.json"))
            sd["shadow_params"] = [shadow[str(i)] for i in range(len(shadow))]
            if len(sd["shadow_params"]) != len(ema.shadow_params) or any(
                    a.shape != b.shape for a, b in zip(sd["shadow_params"], ema.shadow_params)):
                raise ValueError("the EMA parameters do not match this model")
            ema.load_state_dict(sd)
        rng = folder / f"rng-{rank}.safetensors"
        if not rng.is_file():  # resumed with more processes than were saved: rank 0's generators
            rng = folder / "rng-0.safetensors"
        set_rng_state(load_file(str(rng)), read_json(rng.with_suffix(".json")))
        return int(read_json(folder / STATE_FILE)["step"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"cannot resume from {folder}: it does not fit this run ({first[:300]})") from None
