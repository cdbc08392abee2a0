"""LoRA with peft, one path for every U-Net (pixel, latent, Stable Diffusion) and the text encoder.

:func:`add_lora` freezes the model and adds trainable low-rank adapters on the named layers (by last name
component; :func:`resolve_lora_targets` says which names exist). Models with an adapter mixin (diffusers'
``UNet2DConditionModel``, transformers' text encoders) get the adapter in place (``add_adapter``), which
``StableDiffusionPipeline.save_lora_weights`` / ``load_lora_weights`` read and write; a ``UNet2DModel`` has no such
mixin and is wrapped in a peft model instead, which :func:`merge_lora` folds back into a plain ``UNet2DModel`` so
the saved model folder loads with ``UNet2DModel.from_pretrained`` like any other. :func:`lora_state` gives the
adapter weights in peft's key format.
"""

from __future__ import annotations

import torch
from torch import nn

from fairdiff.errors import ConfigError

DEFAULT_LORA_TARGETS = ("to_q", "to_v", "query", "value")  # old and new names of attention projections
ATTN_NAMES = {"to_q", "to_k", "to_v", "to_out", "query", "key", "value", "q_proj", "k_proj", "v_proj"}


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def resolve_lora_targets(model: nn.Module, targets: list[str] | tuple[str, ...],
                         defaults: tuple[str, ...] = DEFAULT_LORA_TARGETS, what: str = "U-Net",
                         key: str = "model.lora_targets") -> list[str]:
    """The targets that name ``nn.Linear`` / conv layers of ``model`` (by last name component).

    ``defaults`` are alternatives (``query``/``value`` in old checkpoints, ``to_q``/``to_v`` in new ones; presets
    differ: ``tiny`` has no attention), so a default name that matches nothing is dropped; a name the user added
    that matches nothing is an error, and so is a list of which nothing matches."""
    leaf = _leaf_names(model)
    found = [t for t in targets if t in leaf]
    missing = [t for t in targets if t not in leaf and t not in defaults]
    if missing or not found:
        bad = missing or list(targets)
        raise ConfigError(f"{key}: {', '.join(bad)} not found in the {what} "
                          f"(attention projections here: {', '.join(sorted(leaf & ATTN_NAMES)) or 'none'})")
    return found


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """Freeze ``model`` and add a trainable LoRA (rank, alpha, gaussian init) on ``targets``; returns the model
    to train: the same object for a model with an adapter mixin, a peft wrapper otherwise."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    if hasattr(model, "add_adapter"):
        model.add_adapter(cfg)
        return model
    return get_peft_model(model, cfg)


def add_unet_lora(unet: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """:func:`add_lora` on a pixel / latent ``UNet2DModel`` with ``model.unet_lora_targets`` (names the preset does
    not have are skipped, at least one must match)."""
    found = resolve_lora_targets(unet, targets, defaults=tuple(targets), key="model.unet_lora_targets")
    return add_lora(unet, found, rank, alpha)


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``model`` in peft's key format (``lora_A`` / ``lora_B``), which ``load_lora_weights``
    reads as is. (Converting to the older ``lora.down`` naming renames attention projections only, so a LoRA on
    attention *and* convolutions was saved in two namings and its attention part was dropped on loading.)"""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def is_lora(unet: nn.Module) -> bool:
    return hasattr(unet, "merge_and_unload")


def merge_lora(unet: nn.Module) -> nn.Module:
    """The plain U-Net with the adapters folded into its weights (a no-op for a U-Net without a peft wrapper)."""
    if not is_lora(unet):
        return unet
    merged = unet.merge_and_unload()
    merged.requires_grad_(True)
    return merged


def lora_parameter_count(unet: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in unet.parameters())


__all__ = ["add_lora", "add_unet_lora", "is_lora", "lora_parameter_count", "lora_state", "merge_lora",
           "resolve_lora_targets"]
