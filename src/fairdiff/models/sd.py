"""Stable-Diffusion-shaped models from a local folder, and a small one built here.

``load_sd(path)`` reads a diffusers-format Stable Diffusion folder (``model_index.json`` + ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) from the user's disk only; nothing is ever fetched from a hub.
A folder that is not such a pipeline, or lacks a component, is a user mistake with a one-line error.

``build_tiny_sd(out)`` writes a small random stack of the same shape (AutoencoderKL, a UNet2DConditionModel with
cross-attention, a 2-layer CLIPTextModel, and a CLIPTokenizer whose character-level vocabulary is written here) as
a ``StableDiffusionPipeline`` folder, so the whole LoRA path can run offline on a CPU.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fairdiff.errors import ConfigError, FairdiffError, RunDirError
from fairdiff.models.lora import DEFAULT_LORA_TARGETS, resolve_lora_targets  # noqa: F401 - re-exported

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TEXT_LORA_TARGETS = ("q_proj", "v_proj")



LORA_FILE = "pytorch_lora_weights.safetensors"  # an sd-finetune run's LoRA, in diffusers' naming


class SDFolderError(FairdiffError):
    """A path that is not a usable diffusers Stable Diffusion folder."""


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline that fine-tuning needs."""

    path: Path
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict


def check_sd_folder(path: str | Path, weights: bool = True) -> Path:
    """Return ``path`` if it looks like a diffusers SD folder, else raise one clear :class:`SDFolderError`.

    ``weights``: also check that the U-Net, VAE and text-encoder weights are complete safetensors files
    (:func:`check_sd_weights`; reads their headers only)."""
    p = Path(path)
    if not p.is_dir():
        raise SDFolderError(f"--sd {p}: no such folder (give a local diffusers Stable Diffusion folder)")
    index = p / "model_index.json"
    if not index.is_file():
        raise SDFolderError(f"--sd {p}: not a diffusers Stable Diffusion folder (no model_index.json)")
    try:
        names = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SDFolderError(f"--sd {p}: model_index.json is not valid JSON") from None
    for comp in SD_COMPONENTS:
        sub = p / comp
        marker = "scheduler_config.json" if comp == "scheduler" else "config.json"
        if comp == "tokenizer":
            ok = sub.is_dir() and any((sub / f).is_file() for f in ("tokenizer.json", "vocab.json"))
        else:
            ok = (sub / marker).is_file()
        if comp not in names or not ok:
            raise SDFolderError(f"--sd {p}: missing component '{comp}' (expected {sub}/)")
    if weights:
        check_sd_weights(p)
    return p


SD_WEIGHT_FILES = {"unet": ("diffusion_pytorch_model.safetensors",),
                   "vae": ("diffusion_pytorch_model.safetensors",),
                   "text_encoder": ("model.safetensors",)}


def check_sd_weights(path: str | Path) -> None:
    """Every weights file of the U-Net, VAE and text encoder is a complete safetensors file (header and size
    checked, nothing loaded); a missing, truncated, corrupt or pickled one is one :class:`SDFolderError`."""
    from fairdiff.models.weights import WeightsError, check_weights_folder

    p = Path(path)
    for comp, names in SD_WEIGHT_FILES.items():
        try:
            check_weights_folder(p / comp, f"--sd {p}: component '{comp}'", names)
        except WeightsError as e:
            raise SDFolderError(str(e)) from None


def load_sd(path: str | Path, device: str | torch.device = "cpu") -> SDComponents:
    """Load the U-Net, VAE, text encoder, tokenizer and scheduler config of a local SD folder (offline)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from fairdiff.models.weights import loader_errors

    p = check_sd_folder(path)
    _quiet_loading()
    loaders = {
        "unet": lambda d: UNet2DConditionModel.from_pretrained(d, local_files_only=True, use_safetensors=True),
        "vae": lambda d: AutoencoderKL.from_pretrained(d, local_files_only=True, use_safetensors=True),
        "text_encoder": lambda d: CLIPTextModel.from_pretrained(d, local_files_only=True, use_safetensors=True),
        "tokenizer": lambda d: CLIPTokenizer.from_pretrained(d, local_files_only=True),
        "scheduler": lambda d: DDPMScheduler.from_pretrained(d, local_files_only=True).config,
    }
    parts = {}
    for comp, load in loaders.items():
        try:
            parts[comp] = load(str(p / comp))
        except FairdiffError:
            raise
        except loader_errors() as e:
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise SDFolderError(f"--sd {p}: cannot load component '{comp}' (damaged or not a diffusers "
                                f"component?): {first}") from None
    for comp in ("unet", "vae", "text_encoder"):
        parts[comp].to(device)
    return SDComponents(p, parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                        dict(parts["scheduler"]))


def _quiet_loading() -> None:
    """No per-file loading bars on stderr (they would break the one-line error contract of the CLI)."""
    from fairdiff.models.weights import quiet_loading

    quiet_loading()


# ---------------------------------------------------------------------------------------------------------
# a small SD-shaped stack, built offline

TINY_MAX_LENGTH = 16


def write_char_tokenizer(folder: str | Path, max_length: int = TINY_MAX_LENGTH):
    """Write a character-level CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``) and load it as a tokenizer."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)


def build_tiny_sd(out: str | Path, resolution: int = 32, seed: int = 0, overwrite: bool = False,
                  vae_path: str | Path | None = None, widths: tuple[int, ...] = (32, 64),
                  text_width: int = 32) -> Path:
    """Write a small random ``StableDiffusionPipeline`` folder (images of ``resolution`` px, 3 channels).

    ``vae_path`` uses a VAE trained by ``fairdiff train-vae`` (3-channel) instead of a random one; ``widths`` are
    the U-Net's block widths (first level with cross-attention, as in SD, the last without) and ``text_width``
    the text encoder's hidden size (= the cross-attention width).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"output folder {out} is not empty; use --overwrite")
        shutil.rmtree(out)
    if resolution < 8 or resolution % 8:
        raise ConfigError(f"--resolution must be a multiple of 8, got {resolution}")
    torch.manual_seed(seed)
    tmp = out.with_name(out.name + ".tok-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = write_char_tokenizer(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    if vae_path is not None:
        from fairdiff.models.vae import load_vae

        vae = load_vae(vae_path)
        if vae.config.in_channels != 3:
            raise ConfigError(f"--vae {vae_path}: a Stable Diffusion VAE needs 3-channel images "
                              f"(this one takes {vae.config.in_channels}; train it with data.channels=3)")
    else:
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=resolution,
                            scaling_factor=0.18215)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=resolution // factor, in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels, block_out_channels=tuple(widths),
        down_block_types=("CrossAttnDownBlock2D",) * (len(widths) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(widths) - 1),
        layers_per_block=1, cross_attention_dim=text_width, attention_head_dim=8, norm_num_groups=8)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
