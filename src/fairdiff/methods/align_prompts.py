"""Distributional alignment on prompts: a prompt-conditioned latent model fine-tuned toward a target per prompt.

The text-to-image form of :mod:`fairdiff.methods.align` (docs/text-to-image.md). A spec gives each prompt either
a target distribution over the groups (the prompts to debias) or ``preserve`` (prompts whose images should not
change). Each micro-batch of N starting latents is split evenly over the spec's prompts, then:

1. a short DDIM chain (``method.align_steps``, eta 0) runs *with the prompt* through the model being tuned, with
   the detached-input, scaled-gradient rule of :func:`~fairdiff.methods.align.chain_scales`; the frozen starting
   model runs the same chain from the same noise without gradient;
2. both final latents go through the frozen VAE decoder (``decode``; the gradient flows through it) to images;
3. for every target prompt, the training classifier's probabilities on that prompt's images give dynamic targets
   (:func:`~fairdiff.methods.align.dynamic_targets`: rank matching for two groups, averaged OT plans for more);
   loss = cross-entropy on those targets + ``preserve_weight`` x (1 - cos) of classifier features against the
   frozen model's image (as for pixel models);
4. for every ``preserve`` prompt: ``preserve_prompt_weight`` x the mean squared pixel difference between the tuned and
   the frozen model's images from the same noise (such images need not be of any group the classifier knows).

The objective owns no loop; the model it is given must accept ``model(x, t, prompt_index=...)`` (the SD
adapter's :class:`~fairdiff.training.sd_lora.PromptConditionedUNet`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.methods.align import (
    AlignObjective,
    chain_scales,
    dynamic_targets,
    load_alignment_classifier,
    scale_grad,
    train_alignment_classifier,
)
from fairdiff.methods.base import LossOutput, Objective
from fairdiff.models.ddim import ddim_chain, sampling_chain

PRESERVE = "preserve"


@dataclass(frozen=True)
class PromptTarget:
    """One prompt of the spec: its index among the run's prompts and its target shares (None: preserve)."""

    prompt: str
    index: int
    target: np.ndarray | None


def parse_prompt_targets(raw: dict, num_groups: int, where: str = "--prompt-targets") -> list[PromptTarget]:
    """``{prompt: [shares] | 'uniform' | 'preserve'}`` -> checked targets (one line for any mistake)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping 'prompt: [shares] | uniform | preserve', e.g. "
                          f"'a handwritten digit: [0.5, 0.5]'")
    out = []
    for i, (prompt, val) in enumerate(raw.items()):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: prompt {prompt!r} is not a non-empty text")
        if val == PRESERVE:
            out.append(PromptTarget(prompt.strip(), i, None))
            continue
        if val == "uniform":
            val = [1.0 / num_groups] * num_groups
        ok = isinstance(val, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in val)
        if not ok:
            raise ConfigError(f"{where}: prompt '{prompt}': give target shares [..], 'uniform' or 'preserve', "
                              f"got {val!r}")
        arr = np.asarray(val, float)
        if len(arr) != num_groups:
            raise ConfigError(f"{where}: prompt '{prompt}' has {len(arr)} target shares but there are "
                              f"{num_groups} groups (data.groups)")
        if (arr < 0).any() or abs(arr.sum() - 1.0) > 1e-6:
            raise ConfigError(f"{where}: prompt '{prompt}': target shares must be >= 0 and sum to 1, got {val}")
        out.append(PromptTarget(prompt.strip(), i, arr))
    if len({t.prompt for t in out}) != len(out):
        raise ConfigError(f"{where}: two prompts are the same text once stripped")
    if all(t.target is None for t in out):
        raise ConfigError(f"{where}: every prompt is 'preserve'; give at least one prompt a target")
    return out


def split_prompts(n: int, num_prompts: int) -> torch.Tensor:
    """Prompt index of each of n images: the prompts in turn (0, 1, .., P-1, 0, 1, ..)."""
    if n < num_prompts:
        raise ConfigError(f"train.batch_size {n} is smaller than the number of prompts ({num_prompts}); every "
                          f"prompt needs images in each micro-batch")
    return torch.arange(n) % num_prompts


class PromptAlignObjective(Objective):
    """Alignment toward a target per prompt, with ``preserve`` prompts kept close to the frozen model."""

    name = "align"

    def __init__(self, base: AlignObjective, targets: list[PromptTarget],
                 decode: Callable[[torch.Tensor], torch.Tensor], classifier_images: torch.Tensor | None,
                 preserve_prompt_weight: float = 1.0) -> None:
        self.base = base  # the options (chain length, weights, classifier) of method.align
        self.preserve_prompt_weight = preserve_prompt_weight
        self.targets = targets
        self.decode = decode  # latents -> images in [-1, 1], differentiable (the frozen VAE decoder)
        self.classifier_images = classifier_images  # pixel training images for the 'auto' training classifier
        self.channels = classifier_images.shape[1] if classifier_images is not None else None
        self.classifier: nn.Module | None = None
        self.frozen: nn.Module | None = None

    def prepare(self, unet: nn.Module, train_images: torch.Tensor, train_groups: torch.Tensor) -> dict:
        """A frozen copy of the starting model and the training classifier (on pixels, not latents)."""
        b, k = self.base, self.info.num_groups
        self.frozen = copy.deepcopy(unet).eval().requires_grad_(False)
        if b.classifier_spec == "auto":
            if self.classifier_images is None:
                raise ConfigError("method align on prompts: the 'auto' classifier needs the pixel training images")
            self.classifier, facts = train_alignment_classifier(self.classifier_images, train_groups, k,
                                                                b.classifier_steps, b.seed)
        else:
            self.classifier, facts = load_alignment_classifier(b.classifier_spec, k)
        self.classifier.eval().requires_grad_(False)
        self.classifier_images = None  # not needed any more
        return {**facts, "prompt_targets": {t.prompt: (t.target.tolist() if t.target is not None else PRESERVE)
                                            for t in self.targets}}

    def chain(self, model: nn.Module, noise: torch.Tensor, prompt_index: torch.Tensor, noise_scheduler,
              grad: bool) -> torch.Tensor:
        """The final latents of the DDIM chain with the prompts (detached inputs, scaled gradients)."""
        chain = sampling_chain(noise_scheduler.config, self.base.steps)
        scales = chain_scales(noise_scheduler.alphas_cumprod, torch.stack(chain.timesteps))

        def eps_fn(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            tb = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
            eps = model(x.detach(), tb, prompt_index=prompt_index).sample
            return scale_grad(eps, scales[i].item()) if grad else eps

        with torch.set_grad_enabled(grad):
            return ddim_chain(eps_fn, noise, chain)

    def images(self, latents: torch.Tensor) -> torch.Tensor:
        """Decoded images in [-1, 1] with the training data's channels (grey data: the classifier sees the RGB
        mean, as the VAE saw grey images repeated to RGB)."""
        x = self.decode(latents).clamp(-1, 1)
        if self.channels == 1 and x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        return x

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        if self.classifier is None or self.frozen is None:
            raise RuntimeError("PromptAlignObjective.prepare must run before loss")
        ref = batch["pixel_values"]
        dev = ref.device
        self.classifier.to(dev)
        self.frozen.to(dev)
        b = self.base
        noise = torch.randn(ref.shape, generator=generator, dtype=torch.float32).to(dev, ref.dtype)
        slot = split_prompts(len(noise), len(self.targets))
        pidx = torch.tensor([t.index for t in self.targets])[slot].to(dev)
        x0 = self.images(self.chain(unet, noise, pidx, noise_scheduler, grad=True))
        with torch.no_grad():
            x0_frozen = self.images(self.chain(self.frozen, noise, pidx, noise_scheduler, grad=False))
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        zero = x0.sum() * 0.0
        ce_sum, pres_sum, keep_n, n_target = zero, zero, 0, 0
        mse_terms = []
        parts: dict[str, torch.Tensor | float] = {}
        for j, t in enumerate(self.targets):
            sel = (slot == j).nonzero().flatten().to(dev)
            if t.target is None:  # preserve: the image from this noise stays what the frozen model made
                mse = (x0[sel] - x0_frozen[sel]).pow(2).mean()
                mse_terms.append(mse)
                parts[f"preserve_mse_{j}"] = mse.detach()
                continue
            logits, feat = self.classifier.forward_features(x0[sel])
            with torch.no_grad():
                _, feat_ref = self.classifier.forward_features(x0_frozen[sel])
            probs = logits.detach().float().softmax(1).cpu().numpy()
            labels, keep = dynamic_targets(probs, t.target, draws=b.draws, threshold=b.threshold, rng=rng)
            keep_t = torch.from_numpy(keep).to(dev)
            ce_each = F.cross_entropy(logits.float(), torch.from_numpy(labels).to(dev), reduction="none")
            ce_sum = ce_sum + (ce_each * keep_t).sum()
            keep_n += int(keep.sum())
            pres_sum = pres_sum + (1 - F.cosine_similarity(feat.float(), feat_ref.float(), dim=1)).sum()
            n_target += len(sel)
            share = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
            parts.update({f"gen_share_{j}_{g}": float(s) for g, s in enumerate(share)})
        ce = ce_sum / max(keep_n, 1)
        pres = pres_sum / max(n_target, 1)
        keep_mse = torch.stack(mse_terms).mean() if mse_terms else zero
        total = ce + b.preserve_weight * pres + self.preserve_prompt_weight * keep_mse
        parts.update({"align_ce": ce.detach(), "preserve": pres.detach(), "preserve_prompts": keep_mse.detach(),
                      "kept": keep_n / max(n_target, 1)})
        return LossOutput(total, parts)
