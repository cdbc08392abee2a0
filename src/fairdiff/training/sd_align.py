"""Wiring of alignment on prompts (``sd-finetune --prompt-targets FILE method.name=align``).

The objective (:class:`fairdiff.methods.align.AlignObjective` in its per-prompt form) needs what only the SD model
knows:
the frozen VAE decoder (the chain from generated latents to the images the classifier judges) and the pixel
training images (for the ``auto`` training classifier). The spec file maps each prompt to its target::

    a handwritten digit: [0.5, 0.5]   # target shares over data.groups (or 'uniform')
    a number: preserve                # keep this prompt's images close to the starting model's
"""

from __future__ import annotations

from pathlib import Path

import torch

from fairdiff.errors import ConfigError
from fairdiff.methods.align import AlignObjective
from fairdiff.methods.align_prompts import parse_prompt_targets


def read_targets_file(path: str | Path) -> dict:
    """The raw ``prompt: target`` mapping of a YAML / JSON file (checked against the groups later)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--prompt-targets {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--prompt-targets {p}: not valid YAML / JSON ({first})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--prompt-targets {p}: expected a mapping 'prompt: [shares] | uniform | preserve', "
                          f"e.g. 'a handwritten digit: [0.5, 0.5]'")
    return raw


def vae_decoder(vae, device: torch.device):
    """Scaled latents -> images in [-1, 1] through the frozen ``vae`` (differentiable; its weights stay frozen)."""
    vae.requires_grad_(False).eval()
    sf = float(vae.config.scaling_factor)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        if next(vae.parameters()).device != latents.device:
            vae.to(latents.device)
        return vae.decode(latents / sf).sample.float()

    return decode


def prompt_align_objective(objective, raw: dict, num_groups: int, vae, pixels: torch.Tensor, device,
                           where: str = "--prompt-targets", preserve_prompt_weight: float = 1.0
                           ) -> AlignObjective:
    """Wrap method align's objective into alignment on prompts (targets checked against ``num_groups``)."""
    if not hasattr(objective, "with_prompts"):  # the registry's takes_prompts, checked when the run opened
        raise ConfigError(f"{where} is for a method whose objective has a per-prompt form (method.name=align)")
    if objective.target is not None:
        raise ConfigError(f"{where}: the targets are per prompt; remove method.target")
    targets = parse_prompt_targets(raw, num_groups, where=where)
    return objective.with_prompts(targets, vae_decoder(vae, device), pixels, preserve_prompt_weight)
