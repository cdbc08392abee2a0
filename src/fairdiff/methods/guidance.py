"""Distribution guidance ("Balancing Act", Parihar et al., CVPR 2024): steer a frozen model's attribute shares.

Two parts:

* **Heads** (the attribute distribution predictor): for every position k of a sampling schedule, a linear head
  maps h-space (the U-Net middle block's output) to attribute logits. Heads are indexed by the step's *position*
  in the schedule, so any scheduler and step count work; the schedule's timesteps are stored with the heads and
  checked at sampling time. The head input is h **flattened** (``pool='flatten'``, as the original's linear heads
  on the whole bottleneck) or averaged over space (``pool='mean'``, fewer weights, for large bottlenecks).
  Heads are fitted on h of real images noised to each step's timestep (``mode='noise'``) or DDIM-inverted to it
  (``mode='invert'``).
* **Guidance** (:class:`DistributionGuidance`): at every sampling step but the first, the denoiser runs with a
  middle-block hook that predicts ``p_i = softmax(head_k(h_i) / tau)``, averages them over the batch, measures
  chi-square (or KL) from the batch share to the target and replaces h by ``h - s * B * grad_h``. The gradient
  of a batch mean scales as 1/B, so multiplying by B makes the same scale ``s`` work for any batch size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError, FairdiffError
from fairdiff.models.ddim import ddim_chain, inversion_chain
from fairdiff.models.hspace import capture_h, edit_h

POOLS = ("flatten", "mean")
MODES = ("noise", "invert")
LOSSES = ("chi2", "kl")


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


class GuidanceHeads(nn.Module):
    """The head banks of all attributes plus their config; ``logits(h, step)`` -> ``{attribute: [B, K]}``."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        if config.pool not in POOLS:
            raise ConfigError(f"unknown head pool '{config.pool}' (known: {', '.join(POOLS)})")
        self.config = config
        self.banks = nn.ModuleDict(
            {a: StepHeads(config.num_steps, config.in_dim, k) for a, k in config.attributes.items()}
        )

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """h ``[B, C, H, W]`` -> head input ``[B, D]`` (float32)."""
        h = h.float()
        return h.flatten(1) if self.config.pool == "flatten" else h.mean(dim=(2, 3))

    def logits(self, h: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        f = self.features(h)
        return {a: bank(f, step) for a, bank in self.banks.items()}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write ``path`` (safetensors, config in its metadata) and ``path.json`` (config + ``extra``)."""
        from safetensors.torch import save_file

        from fairdiff.utils.io import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = json.dumps(asdict(self.config))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp), metadata={"fairdiff_heads": cfg})
        tmp.replace(path)
        atomic_write_text(heads_json_path(path), json.dumps({**asdict(self.config), **(extra or {})}, indent=2))
        return path


def heads_json_path(path: str | Path) -> Path:
    """The JSON written beside a heads file (``heads.safetensors`` -> ``heads.json``)."""
    return Path(path).with_suffix(".json")


def load_heads(path: str | Path, device: str | torch.device = "cpu") -> GuidanceHeads:
    """Read heads written by :meth:`GuidanceHeads.save`, moved once to ``device`` and frozen."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FairdiffError(f"no guidance heads at {path} (train them with 'fairdiff train-heads')")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:  # a corrupt or foreign file is a user mistake
        raise FairdiffError(f"{path} is not a safetensors file: {e}") from None
    if "fairdiff_heads" not in meta:
        raise FairdiffError(f"{path} holds no fairdiff guidance heads (no 'fairdiff_heads' metadata)")
    heads = GuidanceHeads(HeadsConfig(**json.loads(meta["fairdiff_heads"])))
    heads.load_state_dict(state)
    return heads.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ training
def schedule_timesteps(scheduler_kind: str, noise_scheduler_config, num_steps: int) -> list[int]:
    """The timesteps a sampler visits, in order (position k of this list is step k)."""
    from fairdiff.models import build_sampling_scheduler

    sched = build_sampling_scheduler(scheduler_kind, noise_scheduler_config)
    sched.set_timesteps(num_steps)
    return [int(t) for t in sched.timesteps]


@torch.no_grad()
def collect_features(
    unet: nn.Module,
    noise_scheduler_config,
    images: torch.Tensor,
    timesteps: Sequence[int],
    *,
    mode: str = "noise",
    pool: str = "flatten",
    seed: int = 0,
    batch_size: int = 128,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head inputs ``[S, N, D]`` of real images (in [-1, 1]) at each schedule position.

    ``noise``: each image gets fresh Gaussian noise at each step (a generator seeded by ``seed``), as training
    does. ``invert``: deterministic DDIM inversion of each image up the schedule, so h comes from the same kind
    of trajectory sampling follows.
    """
    from diffusers import DDPMScheduler

    if mode not in MODES:
        raise ConfigError(f"unknown head training mode '{mode}' (known: {', '.join(MODES)})")
    ab = DDPMScheduler.from_config(noise_scheduler_config).alphas_cumprod
    device = next(unet.parameters()).device
    gen = torch.Generator("cpu").manual_seed(seed)
    reduce = (lambda h: h.float().flatten(1)) if pool == "flatten" else (lambda h: h.float().mean(dim=(2, 3)))
    out: list[torch.Tensor] = []
    was_training = unet.training
    unet.eval()

    def run(x: torch.Tensor, t: int, labels) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_h(unet) as seen:
            eps = unet(x, torch.full((x.shape[0],), t, device=device), class_labels=labels).sample
        return eps, reduce(seen[-1]).cpu()

    order = sorted(range(len(timesteps)), key=lambda k: timesteps[k])  # the inversion's climbing order
    chain = inversion_chain(ab, timesteps, device)
    try:
        for b in range(0, len(images), batch_size):
            x0 = images[b : b + batch_size].to(device)
            labels = class_labels[b : b + batch_size].to(device) if class_labels is not None else None
            feats = [None] * len(timesteps)
            if mode == "noise":
                for k, t in enumerate(timesteps):
                    noise = torch.randn(x0.shape, generator=gen).to(device)
                    a = ab[t].to(device)
                    feats[k] = run(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, labels)[1]
            else:  # DDIM inversion: climb the schedule from the clean image (the lowest timestep ~ clean)
                def eps_fn(j: int, t: torch.Tensor, x: torch.Tensor, _labels=labels, _feats=feats) -> torch.Tensor:
                    eps, _feats[order[j]] = run(x, int(t), _labels)
                    return eps

                ddim_chain(eps_fn, x0, chain)
            out.append(torch.stack(feats))
    finally:
        unet.train(was_training)
    return torch.cat(out, dim=1)


def fit_linear(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, iters: int = 200, weight_decay: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced multinomial logistic regression ``[N, D] -> K`` (full batch L-BFGS); returns W, b.

    Features are standardised while fitting and the scaling is folded back into W and b, so the head takes raw
    h. Classes are weighted by inverse frequency, so a 4:1 training set does not bias the head's prior.
    """
    feats = feats.float()
    mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-4)
    z = (feats - mu) / sd
    counts = torch.bincount(labels, minlength=num_classes).float()
    cw = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    w = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels, weight=cw) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, (b - w_raw @ mu).detach()


def _balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    pred = logits.argmax(1)
    accs = [(pred[labels == c] == c).float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return float(sum(accs) / len(accs))


@dataclass
class HeadsTrainResult:
    heads: GuidanceHeads
    heldout_accuracy: dict[str, list[float]]  # attribute -> balanced accuracy per step position
    train_accuracy: dict[str, list[float]]
    seconds: float


def train_heads(
    unet: nn.Module,
    noise_scheduler_config,
    images: torch.Tensor,
    labels: torch.Tensor | Mapping[str, torch.Tensor],
    num_steps: int = 50,
    scheduler_kind: str = "ddim",
    *,
    heldout_images: torch.Tensor | None = None,
    heldout_labels: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    num_classes: int | Mapping[str, int] | None = None,
    n_per_step: int | None = 512,
    mode: str = "invert",
    pool: str = "flatten",
    seed: int = 0,
    batch_size: int = 128,
    weight_decay: float = 1e-3,
    progress: bool = False,
) -> HeadsTrainResult:
    """Fit one linear head per step position of a ``scheduler_kind`` schedule with ``num_steps`` steps.

    ``labels`` is a tensor (one attribute, named ``group``) or ``{attribute: tensor}``. ``n_per_step`` images
    (a seeded random subset; all when None) are used for fitting; accuracy on ``heldout_*`` is reported per step.
    """
    import time

    start = time.time()
    if pool not in POOLS:
        raise ConfigError(f"unknown head pool '{pool}' (known: {', '.join(POOLS)})")
    lab = {"group": labels} if torch.is_tensor(labels) else dict(labels)
    held = None
    if heldout_images is not None:
        held = {"group": heldout_labels} if torch.is_tensor(heldout_labels) else dict(heldout_labels or {})
    if num_classes is None:
        ks = {a: int(v.max()) + 1 for a, v in lab.items()}
    elif isinstance(num_classes, int):
        ks = {a: num_classes for a in lab}
    else:
        ks = dict(num_classes)
    timesteps = schedule_timesteps(scheduler_kind, noise_scheduler_config, num_steps)
    g = torch.Generator("cpu").manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[: n_per_step or len(images)]
    imgs, lab = images[idx], {a: v[idx].long() for a, v in lab.items()}

    feats = collect_features(unet, noise_scheduler_config, imgs, timesteps, mode=mode, pool=pool, seed=seed,
                             batch_size=batch_size)
    with capture_h(unet) as seen, torch.no_grad():
        dev = next(unet.parameters()).device
        unet(imgs[:1].to(dev), torch.tensor([timesteps[0]], device=dev))
    h_shape = list(seen[-1].shape[1:])
    hfeats = None
    if held is not None:
        hfeats = collect_features(unet, noise_scheduler_config, heldout_images, timesteps, mode=mode, pool=pool,
                                  seed=seed + 1, batch_size=batch_size)
    cfg = HeadsConfig(attributes=ks, num_steps=num_steps, scheduler=scheduler_kind, timesteps=timesteps,
                      pool=pool, h_shape=h_shape, mode=mode)
    heads = GuidanceHeads(cfg)
    tr_acc: dict[str, list[float]] = {a: [] for a in ks}
    he_acc: dict[str, list[float]] = {a: [] for a in ks}
    for k in range(num_steps):
        for a, bank in heads.banks.items():
            w, b = fit_linear(feats[k], lab[a], ks[a], weight_decay=weight_decay)
            with torch.no_grad():
                bank.weight[k].copy_(w)
                bank.bias[k].copy_(b)
            tr_acc[a].append(_balanced_accuracy(feats[k] @ w.T + b, lab[a], ks[a]))
            if hfeats is not None and a in held:
                he_acc[a].append(_balanced_accuracy(hfeats[k] @ w.T + b, held[a].long(), ks[a]))
        if progress:
            accs = ", ".join(f"{a} {he_acc[a][-1] if he_acc[a] else tr_acc[a][-1]:.3f}" for a in ks)
            print(f"step {k:3d} (t={timesteps[k]:4d}): {accs}", flush=True)
    heads = heads.to(next(unet.parameters()).device).eval().requires_grad_(False)
    return HeadsTrainResult(heads, {a: v for a, v in he_acc.items() if v}, tr_acc, time.time() - start)


# ------------------------------------------------------------------------------------------------ guidance
def parse_target(text: str | Sequence[float], num_classes: int | None = None) -> list[float]:
    """``"0.5,0.5"`` (or a list) -> a checked probability vector (positive, sums to 1, right length)."""
    try:
        vals = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise FairdiffError(f"target '{text}' is not a comma-separated list of numbers") from None
    if num_classes is not None and len(vals) != num_classes:
        raise FairdiffError(f"target {vals} has {len(vals)} shares but the heads predict {num_classes} classes")
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise FairdiffError(f"target {vals}: every share must be positive")
    if abs(sum(vals) - 1) > 1e-3:
        raise FairdiffError(f"target {vals} sums to {sum(vals):.4f}, not 1")
    return vals


def distribution_loss(pbar: torch.Tensor, target: torch.Tensor, kind: str = "chi2") -> torch.Tensor:
    """Chi-square ``sum (pbar - p)^2 / p`` or ``KL(pbar || p)`` between a batch share and the target."""
    if kind == "chi2":
        return ((pbar - target) ** 2 / target).sum()
    if kind == "kl":
        return (pbar * (pbar.clamp_min(1e-12).log() - target.log())).sum()
    raise ConfigError(f"unknown guidance loss '{kind}' (known: {', '.join(LOSSES)})")


class DistributionGuidance:
    """The sampler guidance that pushes each batch's attribute shares toward ``target`` by editing h.

    ``target`` is one share vector (for the heads' single attribute) or ``{attribute: shares}`` (losses are
    summed). ``scale`` is the step size per image: h <- h - scale * B * grad_h(loss) with B the images one batch
    share is taken over, so a scale works for any batch size; 0 gives exactly the unguided samples.
    ``cfg_halves=True`` treats the batch as [conditional; unconditional] halves and takes the share in each half
    separately, so the two are never mixed. ``unet`` pins the hook to that model's middle block; without it any
    diffusers middle block called during the step is edited.
    """

    def __init__(
        self,
        heads: GuidanceHeads,
        target: Sequence[float] | str | Mapping[str, Sequence[float] | str],
        scale: float,
        *,
        temperature: float = 8.0,
        loss: str = "chi2",
        cfg_halves: bool = False,
        unet: nn.Module | None = None,
        check_timesteps: bool = True,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown guidance loss '{loss}' (known: {', '.join(LOSSES)})")
        if temperature <= 0:
            raise FairdiffError("temperature must be positive")
        if not math.isfinite(scale) or scale < 0:
            raise FairdiffError("guidance scale must be a non-negative number")
        attrs = heads.config.attributes
        if not isinstance(target, Mapping):
            if len(attrs) != 1:
                raise FairdiffError(f"heads predict several attributes ({', '.join(attrs)}); give a target for each")
            target = {next(iter(attrs)): target}
        unknown = [a for a in target if a not in attrs]
        if unknown:
            raise FairdiffError(f"no heads for attribute(s) {', '.join(unknown)} (heads know {', '.join(attrs)})")
        dev = next(heads.parameters()).device
        self.targets = {a: torch.tensor(parse_target(v, attrs[a]), device=dev) for a, v in target.items()}
        self.heads, self.scale, self.temperature, self.loss = heads, float(scale), float(temperature), loss
        self.cfg_halves, self.unet, self.check_timesteps = cfg_halves, unet, check_timesteps
        self.history: list[dict] = []  # per guided step: position, loss and the batch shares before the edit

    def _check_step(self, step_index: int, t: torch.Tensor) -> None:
        cfg = self.heads.config
        if step_index >= cfg.num_steps:
            raise FairdiffError(f"heads cover {cfg.num_steps} steps but sampling reached step {step_index + 1}; "
                                f"sample with --steps {cfg.num_steps} --scheduler {cfg.scheduler}")
        tv = int(t.reshape(-1)[0])
        if self.check_timesteps and tv != cfg.timesteps[step_index]:
            raise FairdiffError(f"step {step_index} is at timestep {tv} but the heads were trained for "
                                f"{cfg.timesteps[step_index]}; sample with --steps {cfg.num_steps} "
                                f"--scheduler {cfg.scheduler}")

    def _edit(self, h: torch.Tensor, step: int) -> torch.Tensor:
        b = h.shape[0]
        groups = [slice(0, b // 2), slice(b // 2, b)] if self.cfg_halves and b >= 2 else [slice(0, b)]
        with torch.enable_grad():
            hh = h.detach().float().requires_grad_(True)
            logits = self.heads.logits(hh, step)
            total = hh.new_zeros(())
            shares = {}
            for a, target in self.targets.items():
                p = torch.softmax(logits[a] / self.temperature, dim=1)
                for gi, sl in enumerate(groups):
                    pbar = p[sl].mean(0)
                    # scaling each group's loss by its size makes grad_h independent of the batch size
                    total = total + (sl.stop - sl.start) * distribution_loss(pbar, target, self.loss)
                    shares[f"{a}/{gi}" if len(groups) > 1 else a] = pbar.detach().cpu().tolist()
            (grad,) = torch.autograd.grad(total, hh)
        self.history.append({"step": step, "loss": float(total.detach()) / b, "shares": shares})
        return (hh.detach() - self.scale * grad).to(h.dtype)

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        if self.scale == 0:
            with torch.no_grad():
                return denoise(sample)
        self._check_step(step_index, t)
        if step_index == 0:  # the first step starts from pure noise: nothing to steer yet
            with torch.no_grad():
                return denoise(sample)
        with torch.no_grad(), edit_h(lambda h: self._edit(h, step_index), self.unet):
            return denoise(sample)
