"""LoRA fine-tuning of a local Stable-Diffusion-shaped model with a fairdiff objective (``fairdiff train --sd``).

This is the setting of the original DDM work: VAE frozen, U-Net (and optionally the text encoder) adapted with
peft LoRA (rank 8, lora_alpha 32, attention projections), one generic prompt, and the SAME objectives and the SAME
trainer (training/trainer.py: checkpoints, resume, EMA, ``stop_after``, speed options) as pixel and latent models.
:class:`SDLoraAdapter` is the model adapter: the SD folder is a way to start, like ``model.pretrained``. Only the
denoiser call differs: a conditional U-Net needs prompt embeddings, so :class:`PromptConditionedUNet` wraps it
behind the ``unet(noisy, t, class_labels).sample`` call the objectives make. The training latents are encoded once
through the frozen VAE. Checkpoints hold the trainable (LoRA) tensors only; the EMA averages those.

``train.steps`` counts optimizer steps, each of ``train.grad_accum`` micro-batches (the released DDM code counted
micro-batches). The LoRA is saved with ``StableDiffusionPipeline.save_lora_weights`` (U-Net and text-encoder
parts in one safetensors file, with their LoRA configs as metadata), so ``load_lora_weights`` applies both.

Run folder: ``config.yaml``, ``sd.json`` (base folder, prompts, LoRA targets), ``manifest.json``,
``stats.jsonl``, ``checkpoint-N/``, ``model/pytorch_lora_weights.safetensors`` (EMA weights when ``train.ema``),
``model/<objective module>/``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from fairdiff.config import RunConfig
from fairdiff.errors import ConfigError, RunDirError
from fairdiff.models.lora import add_lora, lora_state, resolve_lora_targets
from fairdiff.models.sd import LORA_FILE, TEXT_LORA_TARGETS, load_sd
from fairdiff.training.adapters import ModelAdapter, TrainableState
from fairdiff.utils.io import atomic_write_text, read_json

SD_RUN_LEGACY = {"sd-run": ["config.yaml", "sd.json"]}  # sd-finetune runs written before the .fairdiff.json marker




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

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, class_labels=None,
                prompt_index: torch.Tensor | None = None) -> _Output:
        """eps_hat; ``prompt_index`` (one prompt per image) overrides the batch's (alignment chooses its own)."""
        index = self.prompt_index if prompt_index is None else prompt_index
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


class SDLoraAdapter(ModelAdapter):
    """The model adapter of ``sd-finetune``: a local SD folder's U-Net (and optionally text encoder) with LoRA."""

    kind = "sd-run"
    legacy = SD_RUN_LEGACY
    progress = "sd-lora"

    def __init__(self, sd_path: str | Path, prompt: str = "a photo", prompts_file: str | None = None,
                 prompt_groups: str | None = None, prompt_targets: str | None = None) -> None:
        self.sd_path, self.prompt, self.prompts_file = sd_path, prompt, prompts_file
        self.prompt_groups_file, self.prompt_targets_file = prompt_groups, prompt_targets
        self.targets_raw: dict | None = None
        self.sd = None
        self.groups = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "SDLoraAdapter":
        """The adapter a config's ``text`` section describes."""
        t = cfg.text
        return cls(t.sd, t.prompt, t.prompts_file, t.prompt_groups, t.prompt_targets)

    def open(self, cfg: RunConfig) -> None:
        given = [f for f, v in (("--prompts-file", self.prompts_file), ("--prompt-groups", self.prompt_groups_file),
                                ("--prompt-targets", self.prompt_targets_file)) if v is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of {', '.join(given)}, not both")
        if self.prompt_targets_file is not None:  # alignment on prompts: the prompts are the spec's
            from fairdiff.training.sd_align import read_targets_file

            from fairdiff.methods.registry import REGISTRY, get_method

            if not get_method(cfg.method.name).takes_prompts:
                takes = ", ".join(n for n, e in REGISTRY.items() if e.takes_prompts)
                raise ConfigError(f"--prompt-targets is for method.name={takes}, not {cfg.method.name}")
            self.targets_raw = read_targets_file(self.prompt_targets_file)
            self.prompts = [str(k).strip() for k in self.targets_raw]
        elif self.prompt_groups_file is not None:  # a prompt per subset (data/prompt_groups.py)
            from fairdiff.data.prompt_groups import load_prompt_groups

            self.groups = load_prompt_groups(self.prompt_groups_file, cfg.data.groups)
            self.prompts = self.groups.prompts
        else:
            self.prompts = read_prompts(self.prompt, self.prompts_file)
        self.sd = load_sd(self.sd_path, "cpu")
        self.unet_targets = resolve_lora_targets(self.sd.unet, cfg.model.lora_targets)
        self.te_targets = resolve_lora_targets(self.sd.text_encoder, list(TEXT_LORA_TARGETS),
                                               what="text encoder") if cfg.model.lora_text_encoder else []

    def inputs(self) -> list[str]:
        return [str(p) for p in (self.sd_path, self.prompts_file, self.prompt_groups_file, self.prompt_targets_file)
                if p]

    def check_resume(self, run_dir: Path) -> None:
        meta = run_dir / "sd.json"
        if not meta.is_file():
            return
        old = read_json(meta)
        if old.get("sd") != str(Path(self.sd_path).resolve()) or old.get("prompts") != self.prompts:
            raise RunDirError(f"cannot resume {run_dir}: it was started from {old.get('sd')} with prompts "
                              f"{old.get('prompts')}, not these; use the same --sd and prompts, or --overwrite")

    def _latents(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Images in [-1, 1] -> scaled posterior means of the frozen VAE (grey images repeated to RGB)."""
        from fairdiff.models.vae import encode

        vae = self.sd.vae
        c = vae.config.in_channels
        if images.shape[1] != c:
            if images.shape[1] != 1:
                raise ConfigError(f"data has {images.shape[1]} channels but the SD VAE takes {c}")
            images = images.repeat(1, c, 1, 1)  # grey digits -> RGB for an RGB VAE
        vae.to(device).requires_grad_(False).eval()
        latents = encode(vae, images)
        vae.to("cpu")
        return latents

    def training_tensor(self, cfg: RunConfig, data, device: torch.device) -> torch.Tensor:
        images, sd = data.train_images, self.sd
        f = 2 ** (len(sd.vae.config.block_out_channels) - 1)
        unet_f = 2 ** (len(sd.unet.config.block_out_channels) - 1)
        if images.shape[-1] % (f * unet_f):
            raise ConfigError(f"data.resolution {images.shape[-1]} must be divisible by {f * unet_f} for this model")
        self.device = device
        self.pixels, self.num_groups = images, data.num_groups  # alignment on prompts judges decoded pixels
        latents = self._latents(images, device)
        if self.groups is not None:  # each image's prompt from its subset
            self.prompt_of = torch.from_numpy(self.groups.prompt_index(data.train_groups.numpy()))
        else:
            self.prompt_of = torch.arange(len(latents)) % len(self.prompts)  # prompts cycled over the images
        return latents

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._latents(images, self.device)

    def wrap_objective(self, objective, cfg: RunConfig):
        """With ``--prompt-targets``: alignment toward a target per prompt through the VAE decoder."""
        if self.targets_raw is None:
            return objective
        from fairdiff.training.sd_align import prompt_align_objective

        return prompt_align_objective(objective, self.targets_raw, self.num_groups, self.sd.vae, self.pixels,
                                      self.device, where=f"--prompt-targets {self.prompt_targets_file}",
                                      preserve_prompt_weight=cfg.method.section().preserve_prompt_weight)

    def build(self, cfg: RunConfig, images: torch.Tensor, num_classes: int | None) -> nn.Module:
        sd = self.sd
        sd.unet.requires_grad_(False)
        sd.text_encoder.requires_grad_(False)
        return PromptConditionedUNet(sd.unet, sd.text_encoder, tokenize(sd.tokenizer, self.prompts),
                                     bool(self.te_targets))

    def noise_scheduler(self, cfg: RunConfig):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.sd.scheduler_config)

    def run_files(self, cfg: RunConfig, images: torch.Tensor) -> dict[str, dict]:
        mc = cfg.model
        return {"sd.json": {"sd": str(Path(self.sd_path).resolve()), "prompts": self.prompts,
                            "unet_lora_targets": self.unet_targets, "text_encoder_lora_targets": self.te_targets,
                            "lora_rank": mc.lora_rank, "lora_alpha": mc.lora_alpha,
                            "latent_shape": list(images.shape[1:]),
                            **({"prompt_groups": dict(zip(self.groups.prompts, self.groups.values))}
                               if self.groups is not None else {})}}

    def finish(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
        sd, mc, tc = self.sd, cfg.model, cfg.train
        add_lora(sd.unet, self.unet_targets, mc.lora_rank, mc.lora_alpha)
        if self.te_targets:
            add_lora(sd.text_encoder, self.te_targets, mc.lora_rank, mc.lora_alpha)
        if tc.gradient_checkpointing:
            sd.unet.enable_gradient_checkpointing()
            if self.te_targets:
                sd.text_encoder.gradient_checkpointing_enable()
        if tc.mixed_precision != "no" and device.type == "cuda":  # frozen weights in half precision, LoRA in fp32
            from diffusers.training_utils import cast_training_params

            wdtype = torch.float16 if tc.mixed_precision == "fp16" else torch.bfloat16
            sd.unet.to(dtype=wdtype)
            sd.text_encoder.to(dtype=wdtype)
            cast_training_params([sd.unet, sd.text_encoder], dtype=torch.float32)
        return model

    def ema_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]  # the LoRA; the frozen base never changes

    def checkpoint_module(self, model: nn.Module):
        return TrainableState(model)

    def on_batch(self, model: nn.Module, idx: torch.Tensor) -> None:
        if self.prompt_of.device != idx.device:
            self.prompt_of = self.prompt_of.to(idx.device)
        model.prompt_index = self.prompt_of[idx]

    def save(self, run_dir: Path, cfg: RunConfig, model: nn.Module, ema, noise_scheduler, modules: dict) -> None:
        """``model/``: the LoRA (EMA weights) in diffusers format, objective modules beside it."""
        from fairdiff.runs import save_module
        from fairdiff.utils.atomic import atomic_dir

        with atomic_dir(run_dir / "model") as tmp:
            params = self.ema_parameters(model)
            if ema is not None:  # the EMA weights in place while saving, the trained ones back afterwards
                ema.store(params)
                ema.copy_to(params)
            try:
                save_lora(tmp, model.unet, model.text_encoder if self.te_targets else None)
            finally:
                if ema is not None:
                    ema.restore(params)
            for name, (module, config) in modules.items():
                save_module(module, tmp / name, config)

    def report(self, cfg: RunConfig, run_dir: Path, manifest: dict) -> None:
        from fairdiff.training.report import extra_lines, last_row, method_line, optimizer_line

        mc, prompts = cfg.model, self.prompts
        shape = read_json(run_dir / "sd.json")["latent_shape"]
        atomic_write_text(run_dir / "report.md", "\n".join([
            f"# Stable Diffusion LoRA run `{cfg.name}`", "",
            f"- base: `{self.sd_path}`; prompts: {prompts[:3]}{' ...' if len(prompts) > 3 else ''}",
            method_line(cfg),
            (f"- LoRA rank {mc.lora_rank}, alpha {mc.lora_alpha}; U-Net targets {self.unet_targets}; "
             f"text encoder targets {self.te_targets or 'none'}"),
            f"- data: counts {manifest['train_counts']}, latents {shape}",
            optimizer_line(cfg, last_row(run_dir)), *extra_lines(run_dir, manifest), ""]))


def text_config(cfg: RunConfig, sd_path: str | Path) -> RunConfig:
    """``cfg`` with the SD folder as ``text.sd`` and as the run's pretrained model (what methods that fine-tune a
    trained model, e.g. align, ask for)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(sd_path)),
                               text=dataclasses.replace(cfg.text, sd=str(sd_path)))
