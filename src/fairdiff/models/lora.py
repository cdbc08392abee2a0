"""LoRA on a diffusers ``UNet2DModel`` (pixel or latent) with peft.

``UNet2DModel`` has no diffusers adapter mixin, so the U-Net is wrapped in a peft model: the base weights are
frozen, low-rank adapters are added to the named layers (ResNet convolutions and, where the preset has
attention, the attention projections), and :func:`merge_lora` folds them back into a plain ``UNet2DModel`` so
the saved model folder loads with ``UNet2DModel.from_pretrained`` like any other.
"""

from __future__ import annotations

from torch import nn

from fairdiff.errors import ConfigError


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def add_unet_lora(unet: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """Return ``unet`` wrapped with trainable LoRA adapters on ``targets`` (by layer name); base weights frozen.

    Target names that the U-Net does not have are skipped (presets differ: ``tiny`` has no attention), but at
    least one must match.
    """
    from peft import LoraConfig, get_peft_model

    leaf = _leaf_names(unet)
    found = [t for t in targets if t in leaf]
    if not found:
        raise ConfigError(f"model.unet_lora_targets: none of {', '.join(targets)} is a layer of this U-Net")
    unet.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=found)
    return get_peft_model(unet, cfg)


def is_lora(unet: nn.Module) -> bool:
    return hasattr(unet, "merge_and_unload")


def merge_lora(unet: nn.Module) -> nn.Module:
    """The plain U-Net with the adapters folded into its weights (a no-op for a U-Net without LoRA)."""
    if not is_lora(unet):
        return unet
    merged = unet.merge_and_unload()
    merged.requires_grad_(True)
    return merged


def lora_parameter_count(unet: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in unet.parameters())


__all__ = ["add_unet_lora", "is_lora", "merge_lora", "lora_parameter_count"]
