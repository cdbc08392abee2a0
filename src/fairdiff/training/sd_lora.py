"""LoRA fine-tuning of a local Stable-Diffusion-shaped model with a fairdiff objective (``fairdiff sd-finetune``).

This is the setting of the original DDM work: VAE frozen, U-Net (and optionally the text encoder) adapted with
peft LoRA (rank 8, lora_alpha 32, attention projections), one generic prompt, and the SAME objective classes as
the pixel/latent trainer (baseline, DDM, reweighting). Only the denoiser call differs: a conditional U-Net needs
prompt embeddings, so :class:`PromptConditionedUNet` wraps it behind the ``unet(noisy, t, class_labels).sample``
call the objectives make. The training latents are encoded once through the frozen VAE.

``train.steps`` counts optimizer steps, each of ``train.grad_accum`` micro-batches (the released DDM code counted
micro-batches). The LoRA is saved with ``StableDiffusionPipeline.save_lora_weights`` (U-Net and text-encoder
parts in one safetensors file, with their LoRA configs as metadata), so ``load_lora_weights`` applies both.

Run folder: ``config.yaml``, ``sd.json`` (base folder, prompts, LoRA targets), ``manifest.json``,
``stats.jsonl``, ``model/pytorch_lora_weights.safetensors``, ``model/<objective module>/``, ``report.md``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fairdiff.training.steps import optimizer_step, record_parts
from fairdiff.config import RunConfig, save_config
from fairdiff.errors import ConfigError
from fairdiff.methods import DataInfo, build_objective
from fairdiff.methods.registry import describe as describe_method, uses_clusters
from fairdiff.models.sd import LORA_FILE, TEXT_LORA_TARGETS, load_sd, resolve_lora_targets
from fairdiff.utils.io import append_jsonl, atomic_write_text, write_json
from fairdiff.utils.outputs import check_output_dir, replace_output_dir
from fairdiff.utils.seed import derive_seed, make_generator, seed_everything

SD_RUN_LEGACY = {"sd-run": ["config.yaml", "sd.json"]}  # sd-finetune runs written before the .fairdiff.json marker


@dataclass
class SDResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float


class _Output:
    """The ``.sample`` wrapper the objectives expect from a denoiser call."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class PromptConditionedUNet(nn.Module):
    """Adapter: ``forward(noisy, t, class_labels=None)`` calls a ``UNet2DConditionModel`` with prompt embeddings.

    ``prompt_ids`` holds the tokenised prompts ``[P, L]``; before each loss call the trainer sets
    ``prompt_index`` (one prompt per image in the batch). The text encoder runs with gradients only when it
    carries a trainable LoRA.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, prompt_ids: torch.Tensor,
                 train_text_encoder: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)
        self.train_text_encoder = train_text_encoder
        self.prompt_index: torch.Tensor | None = None

    def embed(self, index: torch.Tensor) -> torch.Tensor:
        uniq, inv = index.unique(return_inverse=True)
        ids = self.prompt_ids[uniq.to(self.prompt_ids.device)]
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            emb = self.text_encoder(ids)[0]
        return emb[inv.to(emb.device)]

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, class_labels=None) -> _Output:
        index = self.prompt_index
        if index is None or len(index) != noisy.shape[0]:
            index = torch.zeros(noisy.shape[0], dtype=torch.long)
        emb = self.embed(index).to(noisy.dtype)
        return _Output(self.unet(noisy, t, encoder_hidden_states=emb).sample)


def read_prompts(prompt: str, prompts_file: str | None) -> list[str]:
    """One generic prompt, or the non-empty lines of a prompts file."""
    if prompts_file is None:
        return [prompt]
    p = Path(prompts_file)
    if not p.is_file():
        raise ConfigError(f"--prompts-file {p}: no such file")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"--prompts-file {p}: holds no prompt")
    return lines


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> None:
    """Freeze ``model`` and add a trainable peft LoRA adapter on ``targets`` (diffusers / transformers mixin)."""
    from peft import LoraConfig

    model.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    model.add_adapter(cfg)


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``model`` in diffusers' key format (what ``save_lora_weights`` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def save_lora(folder: Path, unet: nn.Module, text_encoder: nn.Module | None) -> None:
    """Save U-Net (+ text-encoder) LoRA as one safetensors file that ``load_lora_weights`` reads entirely."""
    from diffusers import StableDiffusionPipeline

    kw = {}
    if text_encoder is not None:
        kw = {"text_encoder_lora_layers": {k: v.detach().float().cpu() for k, v in lora_state(text_encoder).items()},
              "text_encoder_lora_adapter_metadata": text_encoder.peft_config["default"].to_dict()}
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers={k: v.detach().float().cpu() for k, v in lora_state(unet).items()},
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(), weight_name=LORA_FILE,
        safe_serialization=True, **kw)


def finetune_sd_lora(
    cfg: RunConfig,
    sd_path: str | Path,
    run_dir: str | Path,
    *,
    prompt: str = "a photo",
    prompts_file: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    data=None,
) -> SDResult:
    """Fine-tune LoRA adapters of the SD folder ``sd_path`` on ``cfg.data`` with ``cfg.method``'s objective."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from fairdiff.data import prepare_data
    from fairdiff.models.vae import encode

    run_dir = Path(run_dir)
    tc, mc = cfg.train, cfg.model
    # a new or empty folder, or (with --overwrite) an sd-finetune run that fairdiff wrote; never the cwd or an input
    inputs = [p for p in (sd_path, prompts_file, cfg.data.path) if p]
    check_output_dir(run_dir, "sd-run", overwrite=overwrite, inputs=inputs, legacy_files=SD_RUN_LEGACY)
    prompts = read_prompts(prompt, prompts_file)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    dev, main = accelerator.device, accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    sd = load_sd(sd_path, "cpu")
    unet_targets = resolve_lora_targets(sd.unet, mc.lora_targets)
    te_targets = resolve_lora_targets(sd.text_encoder, list(TEXT_LORA_TARGETS), what="text encoder") \
        if mc.lora_text_encoder else []
    seed_everything(derive_seed(tc.seed, "init"))

    # ---- data: encoded once through the frozen VAE (posterior mean x scaling factor)
    data = data or prepare_data(cfg.data)
    images = data.train_images
    vae_c = sd.vae.config.in_channels
    if images.shape[1] != vae_c:
        if images.shape[1] == 1:
            images = images.repeat(1, vae_c, 1, 1)  # grey digits -> RGB for an RGB VAE
        else:
            raise ConfigError(f"data has {images.shape[1]} channels but the SD VAE takes {vae_c}")
    f = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    unet_f = 2 ** (len(sd.unet.config.block_out_channels) - 1)
    if images.shape[-1] % (f * unet_f):
        raise ConfigError(f"data.resolution {images.shape[-1]} must be divisible by {f * unet_f} for this model")
    sd.vae.to(dev).requires_grad_(False).eval()
    latents = encode(sd.vae, images)
    sd.vae.to("cpu")
    groups, num_groups = data.train_groups.clone(), data.num_groups
    manifest = dict(data.manifest)
    if uses_clusters(cfg.method):
        from fairdiff.data.clusters import cluster_groups

        k = cfg.method.num_clusters or data.num_groups
        groups, num_groups = torch.from_numpy(cluster_groups(data.train_images, k, seed=tc.seed)), k
        manifest["clusters"] = {"k": k, "counts": np.bincount(groups.numpy(), minlength=k).tolist()}
    if main:  # the run folder is written by the main process only
        replace_output_dir(run_dir, "sd-run", inputs=inputs, legacy_files=SD_RUN_LEGACY)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "manifest.json", manifest)
        write_json(run_dir / "sd.json", {"sd": str(Path(sd_path).resolve()), "prompts": prompts,
                                         "unet_lora_targets": unet_targets, "text_encoder_lora_targets": te_targets,
                                         "lora_rank": mc.lora_rank, "lora_alpha": mc.lora_alpha,
                                         "latent_shape": list(latents.shape[1:])})
    accelerator.wait_for_everyone()

    # ---- LoRA adapters, the adapter module, objective, optimizer
    add_lora(sd.unet, unet_targets, mc.lora_rank, mc.lora_alpha)
    sd.text_encoder.requires_grad_(False)
    if te_targets:
        add_lora(sd.text_encoder, te_targets, mc.lora_rank, mc.lora_alpha)
    if tc.gradient_checkpointing:
        sd.unet.enable_gradient_checkpointing()
        if te_targets:
            sd.text_encoder.gradient_checkpointing_enable()
    if tc.mixed_precision != "no" and dev.type == "cuda":  # frozen weights in half precision, LoRA in fp32
        from diffusers.training_utils import cast_training_params

        wdtype = torch.float16 if tc.mixed_precision == "fp16" else torch.bfloat16
        sd.unet.to(dtype=wdtype)
        sd.text_encoder.to(dtype=wdtype)
        cast_training_params([sd.unet, sd.text_encoder], dtype=torch.float32)
    model = PromptConditionedUNet(sd.unet, sd.text_encoder, tokenize(sd.tokenizer, prompts), bool(te_targets))
    noise_scheduler = DDPMScheduler.from_config(sd.scheduler_config)
    objective = build_objective(cfg.method)
    objective.setup(DataInfo(num_groups, np.bincount(groups.numpy(), minlength=num_groups).tolist(),
                             tuple(latents.shape[1:])))
    extra = objective.modules()
    params = [p for p in model.parameters() if p.requires_grad] + [p for m in extra.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                  weight_decay=tc.weight_decay)
    lr_sched = get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=tc.warmup_steps, num_training_steps=tc.steps)
    names = list(extra)
    prepared = accelerator.prepare(model, optimizer, lr_sched, *extra.values())
    model, optimizer, lr_sched = prepared[:3]
    objective.bind_modules(dict(zip(names, prepared[3:])))
    extra = dict(zip(names, prepared[3:]))

    # ---- loop: train.steps optimizer steps of grad_accum micro-batches each
    from fairdiff.training.trainer import batch_indices

    inner = accelerator.unwrap_model(model)
    n = len(latents)
    prompt_of = torch.arange(n) % len(prompts)  # prompts cycled over the training images
    t0, window, last_loss = time.time(), {}, math.nan
    bar = None
    if not quiet and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, desc=f"sd-lora {cfg.method.name}", unit="step")
    model.train()
    for m in extra.values():
        m.train()
    for step in range(tc.steps):
        for micro in range(tc.grad_accum):
            pos = step * tc.grad_accum + micro
            idx = torch.from_numpy(batch_indices(n, tc.batch_size * world, pos, tc.seed)
                                   [rank * tc.batch_size : (rank + 1) * tc.batch_size])
            batch = {"pixel_values": latents[idx].to(dev), "group": groups[idx].to(dev)}
            inner.prompt_index = prompt_of[idx]
            out = objective.loss(model, batch, noise_scheduler, make_generator(tc.seed, "noise", pos, rank))
            accelerator.backward(out.total / tc.grad_accum)
            record_parts(window, out)
        optimizer_step(accelerator, params, optimizer, lr_sched, tc)
        done = step + 1
        if bar is not None:
            bar.update(1)
        if done % tc.log_every == 0 or done == tc.steps:
            row = {k: float(np.mean(v)) for k, v in window.items()}
            last_loss = row.get("loss", math.nan)
            row.update(step=done, lr=lr_sched.get_last_lr()[0], elapsed_s=round(time.time() - t0, 3))
            window = {}
            if main:
                append_jsonl(run_dir / "stats.jsonl", [row])
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}")
    if bar is not None:
        bar.close()

    # ---- save: LoRA (U-Net + text encoder) in diffusers format, objective modules beside it
    from fairdiff.training.checkpoint import atomic_dir_replace, save_module

    accelerator.wait_for_everyone()
    seconds = time.time() - t0
    if not main:
        accelerator.end_training()
        return SDResult(run_dir, tc.steps, last_loss, seconds)
    tmp = run_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_lora(tmp, inner.unet, inner.text_encoder if te_targets else None)
    configs = getattr(objective, "module_configs", {})
    for k, m in extra.items():
        save_module(accelerator.unwrap_model(m), tmp / k, configs.get(k, {}))
    atomic_dir_replace(tmp, run_dir / "model")
    atomic_write_text(run_dir / "report.md", "\n".join([
        f"# Stable Diffusion LoRA run `{cfg.name}`", "",
        f"- base: `{sd_path}`; prompts: {prompts[:3]}{' ...' if len(prompts) > 3 else ''}",
        f"- method: {describe_method(cfg.method, bold=True)}",
        (f"- LoRA rank {mc.lora_rank}, alpha {mc.lora_alpha}; U-Net targets {unet_targets}; "
         f"text encoder targets {te_targets or 'none'}"),
        f"- data: counts {manifest['train_counts']}, latents {list(latents.shape[1:])}",
        (f"- optimizer steps {tc.steps} (batch {tc.batch_size} x accumulation {tc.grad_accum}), "
         f"final loss {last_loss:.4f}, time {seconds:.1f} s"), ""]))
    accelerator.end_training()
    return SDResult(run_dir, tc.steps, last_loss, seconds)
