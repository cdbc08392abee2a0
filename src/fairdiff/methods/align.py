"""Distributional alignment fine-tuning (spec section 4; docs/align.md).

A trained model is fine-tuned (LoRA or full) so that what it *generates* follows a target distribution over the
groups, judged by a training attribute classifier. Each optimizer step:

1. Draw N starting noises and run a short DDIM chain (``align_steps`` steps) with gradient. The latent fed to
   the U-Net at each step is detached; the gradient reaching the step's eps_hat is scaled by
   ``C_i = sqrt(abar_i) sqrt(1 - abar_i) / (1 - alpha_i)``, normalised to geometric mean 1 over the chain
   ("adjusted direct fine-tuning"). The update ``x_prev = f(x_t, eps_hat)`` keeps its direct path to x_t.
2. Classify the generated x0 with the training classifier -> p_i (detached) and derive *dynamic targets*:
   binary -> rank matching (the ceil(N (1 - r)) least group-1-like images get group 0, the rest group 1);
   K > 2 (or joint attributes) -> the average of exact optimal-transport plans between the N images and
   target counts drawn from the target distribution; targets less sure than ``uncertainty_threshold`` are
   dropped.
3. Loss = CE(classifier(x0), target) over kept images + ``preserve_weight`` * (1 - cos(features(x0),
   features(x0_frozen))), where x0_frozen is the frozen starting model's image from the same noise.

Because the chain is deterministic (DDIM, eta 0), generating once with gradient yields the same images and
classifier probabilities as the paper's no-gradient pass followed by a regeneration; fairdiff does one pass.
Targets are computed per micro-batch. The training classifier must not be the evaluation classifier: ``auto``
trains a wider CNN with another seed on the (biased) training images with class-balanced batches.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.models.ddim import ddim_chain, sampling_chain
from fairdiff.methods.base import LossOutput, Objective
from fairdiff.models.classifier import FeatureClassifier
from fairdiff.models.classifier_fit import balanced_batches, fit_classifier

# ----------------------------------------------------------------------------------------- dynamic targets


def rank_targets(p1: np.ndarray, share1: float) -> np.ndarray:
    """Binary dynamic targets: the ceil(N (1 - share1)) images least likely group 1 get 0, the rest 1.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    p1 = np.asarray(p1, float)
    n = len(p1)
    n0 = min(n, math.ceil(n * (1.0 - share1) - 1e-9))
    order = np.argsort(p1, kind="stable")
    out = np.ones(n, np.int64)
    out[order[:n0]] = 0
    return out


def ot_assignment(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Exact optimal transport of N images onto integer group ``counts`` (sum N), cost -log p; returns labels."""
    from scipy.optimize import linear_sum_assignment

    probs = np.asarray(probs, float)
    counts = np.asarray(counts, np.int64)
    if counts.sum() != len(probs):
        raise ValueError("counts must sum to the number of images")
    slots = np.repeat(np.arange(probs.shape[1]), counts)
    cost = -np.log(np.clip(probs, 1e-12, None))[:, slots]
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(probs), np.int64)
    out[rows] = slots[cols]
    return out


def ot_targets(probs: np.ndarray, target: np.ndarray, draws: int, rng: np.random.Generator,
               threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-class dynamic targets: average ``draws`` OT plans with counts ~ Multinomial(N, target).

    Returns (labels, keep mask, uncertainty) where uncertainty = 1 - the averaged plan's largest mass for the
    image; images with uncertainty above ``threshold`` are not kept.
    """
    probs = np.asarray(probs, float)
    n, k = probs.shape
    soft = np.zeros((n, k))
    for _ in range(draws):
        counts = rng.multinomial(n, np.asarray(target, float))
        soft[np.arange(n), ot_assignment(probs, counts)] += 1.0
    soft /= draws
    uncertainty = 1.0 - soft.max(1)
    return soft.argmax(1), uncertainty <= threshold + 1e-12, uncertainty


def joint_probs(per_attribute: list[np.ndarray]) -> np.ndarray:
    """Joint class probabilities of several (assumed independent given the image) attribute classifiers.

    ``[(N, K1), (N, K2)] -> (N, K1*K2)``, index ``i1 * K2 + i2``; pair it with a joint target of that length.
    """
    out = np.asarray(per_attribute[0], float)
    for p in per_attribute[1:]:
        p = np.asarray(p, float)
        out = (out[:, :, None] * p[:, None, :]).reshape(len(out), -1)
    return out


def dynamic_targets(probs: np.ndarray, target: np.ndarray, *, draws: int = 10, threshold: float = 0.2,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, keep) for a batch: rank matching for two groups, averaged OT plans for more."""
    probs = np.asarray(probs, float)
    if probs.shape[1] == 2:
        return rank_targets(probs[:, 1], float(target[1])), np.ones(len(probs), bool)
    labels, keep, _ = ot_targets(probs, target, draws, rng or np.random.default_rng(0), threshold)
    return labels, keep


# ----------------------------------------------------------------------------------------- gradient scaling


def chain_scales(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """C_i = sqrt(abar_t) sqrt(1 - abar_t) / (1 - alpha_t) at each chain timestep, geometric mean 1."""
    abar = alphas_cumprod.double()
    alpha = abar / torch.cat([abar.new_ones(1), abar[:-1]])  # per-step alpha_t = abar_t / abar_{t-1}
    t = timesteps.long().cpu()
    c = abar[t].sqrt() * (1 - abar[t]).sqrt() / (1 - alpha[t])
    return (c / c.log().mean().exp()).float()


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in the backward pass."""
    return _ScaleGrad.apply(x, float(scale))


# ----------------------------------------------------------------------------------------- the objective


class AlignObjective(Objective):
    """Fine-tunes a trained denoiser toward ``target`` group shares of its generated images.

    The one alignment objective for pixel, latent and prompt-conditioned models. Two optional parts make it the
    text-to-image form (:func:`with_prompts`, docs/text-to-image.md): ``prompts``, a target (or ``preserve``) per
    prompt, each micro-batch split evenly over them and the model called with ``prompt_index``; and ``decode``,
    latents -> images through a frozen VAE decoder (the gradient flows through it), so the classifier sees
    pixels. A ``preserve`` prompt's images are kept close to the frozen model's from the same noise
    (``preserve_prompt_weight`` x mean squared pixel difference)."""

    name = "align"

    def __init__(self, target: list[float] | None = None, steps: int = 10, preserve_weight: float = 1.0,
                 threshold: float = 0.2, draws: int = 10, classifier: str = "auto", classifier_steps: int = 300,
                 seed: int = 0) -> None:
        self.target = target
        self.steps = steps
        self.preserve_weight = preserve_weight
        self.threshold = threshold
        self.draws = draws
        self.classifier_spec = classifier
        self.classifier_steps = classifier_steps
        self.seed = seed
        self.classifier: nn.Module | None = None
        self.frozen: nn.Module | None = None
        self.prompts: list | None = None  # PromptTarget's (align_prompts.py) for the text-to-image form
        self.decode = None  # latents -> images in [-1, 1] (differentiable), or None for pixel models
        self.classifier_images: torch.Tensor | None = None  # pixel training images when the model's are latents
        self.channels: int | None = None
        self.preserve_prompt_weight = 1.0

    @classmethod
    def from_config(cls, m, seed: int = 0) -> "AlignObjective":
        return cls(m.target, m.align_steps, m.preserve_weight, m.uncertainty_threshold, m.ot_draws,
                   m.align_classifier, m.align_classifier_steps, seed)

    def with_prompts(self, prompts: list, decode, classifier_images: torch.Tensor | None,
                     preserve_prompt_weight: float = 1.0) -> "AlignObjective":
        """The text-to-image form: a target (or preserve) per prompt, images decoded from latents by ``decode``,
        the 'auto' training classifier fitted on ``classifier_images`` (pixels)."""
        self.prompts, self.decode = list(prompts), decode
        self.classifier_images = classifier_images
        self.channels = classifier_images.shape[1] if classifier_images is not None else None
        self.preserve_prompt_weight = float(preserve_prompt_weight)
        return self

    # ---- set-up: frozen copy of the starting model, training classifier
    def prepare(self, unet: nn.Module, train_images: torch.Tensor, train_groups: torch.Tensor) -> dict:
        """Keep a frozen copy of the starting U-Net and build the training classifier; returns facts to log."""
        k = self.info.num_groups
        self.target_arr = np.full(k, 1.0 / k) if self.target is None else np.asarray(self.target, float)
        self.frozen = copy.deepcopy(unet).eval().requires_grad_(False)
        images = train_images
        if self.prompts is not None:
            images = self.classifier_images
            if images is None and self.classifier_spec == "auto":
                raise ConfigError("method align on prompts: the 'auto' classifier needs the pixel training images")
        if self.classifier_spec == "auto":
            self.classifier, facts = train_alignment_classifier(images, train_groups, k, self.classifier_steps,
                                                                self.seed)
        else:
            self.classifier, facts = load_alignment_classifier(self.classifier_spec, k)
        self.classifier.eval().requires_grad_(False)
        self.classifier_images = None  # not needed any more
        if self.prompts is not None:
            facts = {**facts, "prompt_targets": {t.prompt: (t.target.tolist() if t.target is not None else "preserve")
                                                 for t in self.prompts}}
        return facts

    def chain(self, model: nn.Module, noise: torch.Tensor, noise_scheduler, grad: bool, **cond) -> torch.Tensor:
        """The final sample of the short DDIM chain (detached inputs, scaled gradients; ``cond`` to the model)."""
        chain = sampling_chain(noise_scheduler.config, self.steps)
        scales = chain_scales(noise_scheduler.alphas_cumprod, torch.stack(chain.timesteps))

        def eps_fn(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            tb = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
            eps = model(x.detach(), tb, **cond).sample
            return scale_grad(eps, scales[i].item()) if grad else eps

        with torch.set_grad_enabled(grad):
            return ddim_chain(eps_fn, noise, chain)

    def images(self, x0: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] as the classifier takes them: decoded when the model makes latents (grey data: the
        RGB mean, as the VAE saw grey images repeated to RGB)."""
        if self.decode is None:
            return x0.clamp(-1, 1)
        x = self.decode(x0).clamp(-1, 1)
        if self.channels == 1 and x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        return x

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        if self.classifier is None or self.frozen is None:
            raise RuntimeError("AlignObjective.prepare must run before loss")
        ref = batch["pixel_values"]
        dev = ref.device
        self.classifier.to(dev)
        self.frozen.to(dev)
        noise = torch.randn(ref.shape, generator=generator, dtype=torch.float32).to(dev, ref.dtype)
        if self.prompts is None:  # one target over the whole batch
            cond: dict = {}
            parts_of = [(None, self.target_arr, torch.arange(len(noise), device=dev))]
        else:
            from fairdiff.methods.align_prompts import split_prompts

            slot = split_prompts(len(noise), len(self.prompts))
            cond = {"prompt_index": torch.tensor([t.index for t in self.prompts])[slot].to(dev)}
            parts_of = [(j, t.target, (slot == j).nonzero().flatten().to(dev)) for j, t in enumerate(self.prompts)]
        x0 = self.images(self.chain(unet, noise, noise_scheduler, True, **cond))
        with torch.no_grad():
            x0_frozen = self.images(self.chain(self.frozen, noise, noise_scheduler, False, **cond))
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        zero = x0.sum() * 0.0
        ce_sum, pres_sum, keep_n, n_target = zero, zero, 0, 0
        mse_terms = []
        parts: dict[str, torch.Tensor | float] = {}
        for j, target, sel in parts_of:
            tag = "" if j is None else f"{j}_"
            if target is None:  # preserve: the image from this noise stays what the frozen model made
                mse = (x0[sel] - x0_frozen[sel]).pow(2).mean()
                mse_terms.append(mse)
                parts[f"preserve_mse_{j}"] = mse.detach()
                continue
            logits, feat = self.classifier.forward_features(x0[sel])
            with torch.no_grad():
                _, feat_ref = self.classifier.forward_features(x0_frozen[sel])
            probs = logits.detach().float().softmax(1).cpu().numpy()
            labels, keep = dynamic_targets(probs, target, draws=self.draws, threshold=self.threshold, rng=rng)
            keep_t = torch.from_numpy(keep).to(dev)
            ce_each = F.cross_entropy(logits.float(), torch.from_numpy(labels).to(dev), reduction="none")
            ce_sum = ce_sum + (ce_each * keep_t).sum()
            keep_n += int(keep.sum())
            pres_sum = pres_sum + (1 - F.cosine_similarity(feat.float(), feat_ref.float(), dim=1)).sum()
            n_target += len(sel)
            share = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
            parts.update({f"gen_share_{tag}{g}": float(s) for g, s in enumerate(share)})
        ce = ce_sum / max(keep_n, 1)
        pres = pres_sum / max(n_target, 1)
        total = ce + self.preserve_weight * pres
        parts.update({"align_ce": ce.detach(), "preserve": pres.detach(), "kept": keep_n / max(n_target, 1)})
        if self.prompts is not None:
            keep_mse = torch.stack(mse_terms).mean() if mse_terms else zero
            total = total + self.preserve_prompt_weight * keep_mse
            parts["preserve_prompts"] = keep_mse.detach()
        return LossOutput(total, parts)


# ----------------------------------------------------------------------------------------- training classifier


class AlignClassifier(FeatureClassifier):
    """The training classifier: 4 conv layers (wider and deeper than the evaluation CNN) -> features -> logits.

    Differentiable in [-1, 1] image space; ``forward_features`` returns (logits, penultimate features), the
    features being what the preservation term compares.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)


def train_alignment_classifier(images: torch.Tensor, groups: torch.Tensor, num_classes: int, steps: int = 300,
                               seed: int = 0, batch_size: int = 64, lr: float = 2e-3) -> tuple[nn.Module, dict]:
    """Train :class:`AlignClassifier` on the training images with class-balanced batches (seeded).

    Images are the denoiser's training tensors in [-1, 1]; batches draw equally from every group so the
    classifier is not biased toward the majority the fine-tuning is meant to correct. Small Gaussian noise
    augmentation keeps it usable on slightly imperfect generated images.
    """
    from fairdiff.utils.seed import derive_seed

    images = images.float().cpu()
    groups = groups.long().cpu()
    pools = [torch.nonzero(groups == g).flatten() for g in range(num_classes)]
    if any(len(p) == 0 for p in pools):
        raise ConfigError("method align: every group needs training images for the training classifier")
    torch.manual_seed(derive_seed(seed, "align-classifier", "init"))
    g = torch.Generator().manual_seed(derive_seed(seed, "align-classifier", "batches"))
    model = AlignClassifier(images.shape[1], num_classes)
    fit_classifier(model, balanced_batches(images, groups, pools, batch_size, g, noise_std=0.05), steps, lr)
    with torch.no_grad():
        pred = torch.cat([model(images[s : s + 1000]).argmax(1) for s in range(0, len(images), 1000)])
    per_group = [float((pred[p] == gi).float().mean()) for gi, p in enumerate(pools)]
    return model, {"kind": "align-cnn", "steps": steps, "seed": seed, "train_accuracy_per_group": per_group}


def load_alignment_classifier(path: str, num_classes: int) -> tuple[nn.Module, dict]:
    """A TorchScript classifier file (differentiable); it must return logits, or (logits, features)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"method.align_classifier: no such file {p} (use 'auto' or a TorchScript file)")
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-facing bad file
        raise ConfigError(f"method.align_classifier: {p} is not a TorchScript file "
                          f"({exc.__class__.__name__})") from None

    class _Wrap(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.m(x)
            if isinstance(out, (tuple, list)):
                return out[0], out[1]
            return out, out.softmax(1)

    wrapped = _Wrap(module)
    return wrapped, {"kind": "torchscript", "path": str(p), "num_classes": num_classes}
