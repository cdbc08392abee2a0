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

This module holds the per-prompt spec (:func:`parse_prompt_targets`, :func:`split_prompts`); the objective is
the one :class:`~fairdiff.methods.align.AlignObjective` in its text-to-image form
(:meth:`~fairdiff.methods.align.AlignObjective.with_prompts`). It owns no loop; the model it is given must accept
``model(x, t, prompt_index=...)`` (the SD adapter's :class:`~fairdiff.training.sd_lora.PromptConditionedUNet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fairdiff.errors import ConfigError

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
        from fairdiff.metrics.functional import check_shares

        try:
            arr = check_shares(val, num_groups, what=f"{where}: prompt '{prompt}': target",
                               groups_word="groups (data.groups)")
        except ValueError as e:
            raise ConfigError(str(e)) from None
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
