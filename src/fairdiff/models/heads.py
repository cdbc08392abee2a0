"""Per-step h-space attribute heads: distribution guidance's attribute distribution predictor, a diffusers model.

For every position k of a sampling schedule, a linear head maps h-space (the U-Net middle block's output) to
attribute logits. Heads are indexed by the step's *position* in the schedule, so any scheduler and step count
work; the schedule's timesteps are stored with the heads and checked at sampling time. The head input is h
**flattened** (``pool='flatten'``, as the original's linear heads on the whole bottleneck) or averaged over space
(``pool='mean'``, fewer weights, for large bottlenecks).

:class:`GuidanceHeads` is a diffusers ``ModelMixin`` + ``ConfigMixin``, so heads are a diffusers model folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``, ``from_pretrained`` reads it). :func:`save_heads`
writes one atomically with ``record.json`` (the config plus how the heads were fitted) and fairdiff's marker;
:func:`load_heads` reads such a folder, or a single heads ``.safetensors`` file as fairdiff wrote them before
(the config in the file's metadata, a ``.json`` record beside it).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from fairdiff.errors import ConfigError, FairdiffError

POOLS = ("flatten", "mean")


def pool_h(h: torch.Tensor, pool: str) -> torch.Tensor:
    """h ``[B, C, H, W]`` -> head input ``[B, D]`` float32: flattened, or the mean over positions. The one pooling
    the heads, their fitting and the recording sampler share (gradients flow; detach where needed)."""
    h = h.float()
    return h.flatten(1) if pool == "flatten" else h.mean(dim=(2, 3))
HEADS_KIND = "heads"  # the marker kind of a heads folder
RECORD = "record.json"  # in a heads folder: the config plus how the heads were fitted
META_KEY = "fairdiff_heads"  # the safetensors metadata key of a single-file heads file (the earlier format)

log = logging.getLogger(__name__)


@dataclass
class HeadsConfig:
    """What a head bank was trained for; stored with the weights."""

    attributes: dict[str, int]  # attribute name -> number of classes
    num_steps: int
    scheduler: str
    timesteps: list[int]  # the schedule's timesteps, in sampling order (index = step position)
    pool: str = "flatten"
    h_shape: list[int] = field(default_factory=list)  # C, H, W of the middle block's output
    mode: str = "noise"
    # the model the heads were fitted on (:func:`model_fingerprint`): {"unet_sha256", "path"[, "lora_sha256"]};
    # None in heads written before fairdiff recorded it (they load, with a warning where they are used)
    fitted_on: dict | None = None

    @property
    def in_dim(self) -> int:
        c, h, w = self.h_shape
        return c * h * w if self.pool == "flatten" else c


class StepHeads(nn.Module):
    """One linear head per sampling step for one attribute: weights ``[S, K, D]``, biases ``[S, K]``."""

    def __init__(self, num_steps: int, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_steps, num_classes, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_steps, num_classes))

    def forward(self, feats: torch.Tensor, step: int) -> torch.Tensor:
        return F.linear(feats, self.weight[step], self.bias[step])


class GuidanceHeads(ModelMixin, ConfigMixin):
    """The head banks of all attributes; ``logits(h, step)`` -> ``{attribute: [B, K]}``.

    ``config`` holds the :class:`HeadsConfig` fields (attribute access: ``heads.config.timesteps``); ``spec`` is
    them as a :class:`HeadsConfig`."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, attributes: dict[str, int], num_steps: int, scheduler: str, timesteps: list[int],
                 pool: str = "flatten", h_shape: list[int] = (), mode: str = "noise",
                 fitted_on: dict | None = None) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"unknown head pool '{pool}' (known: {', '.join(POOLS)})")
        in_dim = HeadsConfig(attributes, num_steps, scheduler, list(timesteps), pool, list(h_shape), mode).in_dim
        self.banks = nn.ModuleDict({a: StepHeads(num_steps, in_dim, k) for a, k in attributes.items()})

    @classmethod
    def from_spec(cls, spec: HeadsConfig) -> "GuidanceHeads":
        """Fresh (zero) heads for ``spec``."""
        return cls(**asdict(spec))

    @property
    def spec(self) -> HeadsConfig:
        return HeadsConfig(**{f.name: self.config.get(f.name, f.default) for f in fields(HeadsConfig)})

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """h ``[B, C, H, W]`` -> head input ``[B, D]`` (float32)."""
        return pool_h(h, self.config.pool)

    def logits(self, h: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        f = self.features(h)
        return {a: bank(f, step) for a, bank in self.banks.items()}


def schedule_timesteps(scheduler_kind: str, noise_scheduler_config, num_steps: int) -> list[int]:
    """The timesteps a sampler visits, in order (position k of this list is step k)."""
    from fairdiff.models import build_sampling_scheduler

    sched = build_sampling_scheduler(scheduler_kind, noise_scheduler_config)
    sched.set_timesteps(num_steps)
    return [int(t) for t in sched.timesteps]


def save_heads(heads: GuidanceHeads, folder: str | Path, record: dict | None = None) -> Path:
    """Write ``heads`` to ``folder``: ``save_pretrained`` plus ``record.json`` (config + ``record``) and the marker.

    The folder is built beside its place and renamed into it, so a crash leaves the old folder or the new one,
    never half of one; an existing folder is replaced only when it is empty or fairdiff's own heads folder."""
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir, write_marker

    folder = Path(folder)
    check_output_dir(folder, HEADS_KIND, overwrite=True, whole=True)
    folder.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.resolve().parent, prefix=f".{folder.resolve().name}.", suffix=".tmp"))
    old = None
    try:
        heads.save_pretrained(tmp)
        write_json(tmp / RECORD, {**asdict(heads.spec), **(record or {})})
        write_marker(tmp, HEADS_KIND)
        if folder.exists():
            if any(folder.iterdir()):
                old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
                folder.rename(old)
            else:
                folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def read_heads_record(path: str | Path) -> dict:
    """The record written with heads (``record.json`` in a heads folder, the ``.json`` beside a heads file)."""
    from fairdiff.utils.io import read_json_checked

    path = Path(path)
    return read_json_checked(path / RECORD if path.is_dir() else path.with_suffix(".json"), "heads record")


def load_heads(path: str | Path, device: str | torch.device = "cpu") -> GuidanceHeads:
    """Read heads (a heads folder or a single heads file of the earlier format), moved to ``device``, frozen."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir() and (path / GuidanceHeads.config_name).is_file():
        try:
            heads = GuidanceHeads.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, SafetensorError) as e:
            first = " ".join(str(e).split())[:200]
            raise FairdiffError(f"cannot load the guidance heads in {path} (truncated or not heads?): {first}") \
                from None
        return heads.to(device).eval().requires_grad_(False)
    if not path.is_file():
        raise FairdiffError(f"no guidance heads at {path} (fit them with 'fairdiff heads fit')")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:  # a corrupt or foreign file is a user mistake
        raise FairdiffError(f"{path} is not a safetensors file: {e}") from None
    if META_KEY not in meta:
        raise FairdiffError(f"{path} holds no fairdiff guidance heads (no '{META_KEY}' metadata)")
    heads = GuidanceHeads.from_spec(HeadsConfig(**json.loads(meta[META_KEY])))
    heads.load_state_dict(state)
    return heads.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------
# what heads were fitted on


def model_fingerprint(unet_or_folder, extra: dict[str, str | Path] | None = None) -> dict | None:
    """Which model a U-Net is: ``{"unet_sha256": ..., "path": ...}`` from the safetensors weights of its folder.

    ``unet_or_folder``: a U-Net folder, or a U-Net module loaded with ``from_pretrained`` (its config's
    ``_name_or_path`` names the folder). ``extra``: further weight files that change the model (an SD run's LoRA:
    ``{"lora_sha256": path}``). None when the U-Net has no weights file (built in code)."""
    from fairdiff.utils.io import sha256_file

    if isinstance(unet_or_folder, (str, Path)):
        folder = Path(unet_or_folder)
    else:
        name = getattr(getattr(unet_or_folder, "config", None), "get", lambda *_: None)("_name_or_path", None)
        if not name:
            return None
        folder = Path(name)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    if len(files) == 1:
        digest = sha256_file(files[0])
    else:
        import hashlib

        digest = hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}" for f in files).encode()).hexdigest()
    fp: dict = {"unet_sha256": digest, "path": str(folder.resolve())}
    for key, path in (extra or {}).items():
        fp[key] = sha256_file(path)
    return fp


def check_heads_model(heads: GuidanceHeads, fingerprint: dict | None, heads_path, model, force: bool = False) -> None:
    """Refuse heads fitted on another model than ``fingerprint`` (one line naming both) unless ``force``, which
    warns instead; heads from before the fingerprint was recorded warn. Nothing to check when the model has no
    weights file (``fingerprint`` None)."""
    fitted = heads.config.get("fitted_on") if hasattr(heads.config, "get") else None
    if fingerprint is None:
        return
    if not fitted:
        log.warning("warning: heads %s do not record the model they were fitted on (written by an earlier "
                    "fairdiff); make sure they were fitted on %s", heads_path, model)
        return
    keys = [k for k in fingerprint if k.endswith("_sha256")]
    keys += [k for k in fitted if k.endswith("_sha256") and k not in keys]
    if all(fitted.get(k) == fingerprint.get(k) for k in keys):
        return
    msg = (f"heads {heads_path} were fitted on another model ({fitted.get('path', '?')}, U-Net sha256 "
           f"{str(fitted.get('unet_sha256'))[:12]}) than {model} (U-Net sha256 "
           f"{str(fingerprint.get('unet_sha256'))[:12]}")
    if fitted.get("lora_sha256") != fingerprint.get("lora_sha256"):
        msg += ", another LoRA"
    msg += ")"
    if not force:
        raise FairdiffError(msg + "; fit heads for this model, or pass --force to use them anyway")
    log.warning("warning: %s; used anyway (--force)", msg)
