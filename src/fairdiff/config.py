"""Typed run configuration.

A run is described by one :class:`RunConfig` made of sections (data, model, method, train, sample, eval).
Configs come from YAML files and dotted command-line overrides (``train.lr=2e-4 data.shares=[0.8,0.2]``);
unknown keys and values of the wrong type are rejected with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fairdiff.errors import ConfigError
from fairdiff.metrics.functional import check_shares
from fairdiff.method_options import MethodName, check_sections, options_of, union_fields, unknown_option_message
from fairdiff.utils.typed_config import (  # noqa: F401  (from_dict, parse_override, ...: re-exported)
    at_least,
    check_finite,
    from_dict,
    in_range,
    parse_override,
    read_yaml_file,
    set_dotted,
    to_dict,
)


@dataclass
class DataConfig:
    """Which images to train on and how to bias them."""

    source: Literal["digits", "mnist", "folder", "celeba", "faces-mini", "synthetic"] = "digits"
    path: str | None = None  # folder for mnist (IDX files), folder, celeba; None = cache for mnist / faces-mini
    attribute: str = "label"  # the attribute that defines groups (class label for digits / mnist)
    groups: list[int] = field(default_factory=lambda: [0, 1])  # attribute values kept, one group each
    shares: list[float] = field(default_factory=lambda: [0.8, 0.2])  # training share of each group
    size: int | None = None  # training images in all; None = the largest set with these shares
    heldout_per_group: int = 30  # balanced real images per group kept out of training, for evaluation
    resolution: int = 16
    channels: int | None = None  # None = the source's own (1 for digits / mnist, 3 for faces)
    resize: Literal["resize", "pad"] = "resize"
    seed: int = 0
    # synthetic shapes (tests)
    synthetic_size: int = 600
    synthetic_classes: int = 2
    # label-free debiasing (methods tiw / iw, docs/tiw.md): a small unlabeled reference set from the wanted
    # distribution. Drawn from images that are neither training nor held-out (labels only select them), or read
    # from the user's own folder of images. Checked when the data is prepared (data/reference.py).
    reference: int | float | None = None  # a count (integer >= 1) or a fraction (< 1) of the training set
    reference_shares: list[float] | None = None  # group shares of the drawn reference set; None = balanced
    reference_dir: str | None = None  # a folder of reference images (no labels needed), instead of drawing
    # "reference": train on the reference set alone (a baseline); "both": the training set and the reference set
    # together (the reference's groups must be known: drawn, or a reference_dir with groups.csv)
    train_on: Literal["train", "reference", "both"] = "train"


@dataclass
class ModelConfig:
    """The denoiser: a diffusers U-Net preset and the noise schedule."""

    preset: Literal["tiny", "mid", "small", "base"] = "tiny"
    conditional: bool = False  # condition the U-Net on the group (the conditional scenario)
    pretrained: str | None = None  # a run or model folder whose U-Net initialises this one (fine-tuning)
    prediction_type: Literal["epsilon"] = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    # latent diffusion (docs/latent.md): a trained VAE folder (``fairdiff train --vae``); None = pixel space
    vae: str | None = None
    vae_preset: Literal["tiny", "small"] = "tiny"  # the VAE that ``train-vae`` builds
    vae_latent_channels: int = 4
    vae_kl_weight: float = 1e-6  # KL term of the VAE loss (reconstruction MSE + kl_weight * KL)
    # LoRA fine-tuning of a Stable-Diffusion-shaped model (``fairdiff train --sd``)
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_v", "query", "value"])
    lora_text_encoder: bool = False  # also LoRA on the text encoder's q_proj / v_proj
    # LoRA on the pixel / latent U-Net of the main trainer (fine-tuning from ``pretrained``; merged on save)
    lora: bool = False
    unet_lora_targets: list[str] = field(
        default_factory=lambda: ["conv1", "conv2", "to_q", "to_k", "to_v"]
    )


def _method_unknown_key(cls: type, key: str, data: dict) -> str:
    return unknown_option_message(key, data.get("name", "baseline"))


def _method_section(self) -> Any:
    """This method's own options (an instance of its section's dataclass, see fairdiff.method_options)."""
    return options_of(self)


# The training objective (``name``) and its options: the union of every method's section (method_options.py),
# flat, so that users write ``method.alpha`` and run folders keep one shape. Options of another method than
# ``name`` are accepted and have no effect; a key no method has is an error naming the method's options.
MethodConfig = dataclasses.make_dataclass(
    "MethodConfig",
    [("name", MethodName, field(default="baseline")), *union_fields()],
    namespace={"__doc__": "The training objective (``name``) and the options of every method, flat (see "
                          "fairdiff.method_options).",
               "__module__": __name__, "section": _method_section,
               "unknown_key_message": classmethod(_method_unknown_key)},
)


@dataclass
class TrainConfig:
    """Optimisation. ``steps`` counts optimizer steps; each takes ``grad_accum`` micro-batches."""

    steps: int = 1000
    batch_size: int = 64  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 50
    clip_mode: Literal["norm", "value", "none"] = "norm"
    max_grad_norm: float = 1.0
    ema: bool = True
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    log_every: int = 10
    sample_every: int = 0  # 0 = no periodic sample grids
    checkpoint_every: int = 500  # 0 = only the last step's checkpoint (and one on SIGINT / SIGTERM)
    checkpoint_total_limit: int = 2
    seed: int = 0
    gradient_checkpointing: bool = False  # trade compute for memory (used by sd-finetune)
    # GPU throughput options (docs/performance.md); all off by default, so CPU runs and results are unchanged
    channels_last: bool = False  # U-Net weights and input batches in NHWC memory layout (faster convs on GPUs)
    compile: bool = False  # torch.compile the U-Net forward (checkpoints keep the uncompiled module)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fused_optimizer: bool = False  # CUDA only: AdamW(fused=True) and a foreach EMA update; ignored elsewhere
    data_on_device: bool = False  # keep the training tensor and labels on the accelerator; index them there


@dataclass
class SampleConfig:
    """How images are drawn from a trained model."""

    n: int = 64
    batch_size: int = 256
    steps: int = 50
    scheduler: Literal["ddim", "ddpm", "dpmpp", "unipc"] = "ddim"  # dpmpp / unipc: multistep, fewer steps
    eta: float = 0.0
    seed: int = 0  # image i uses seed + i
    use_ema: bool = True
    # GPU throughput options (docs/performance.md); per-image seeding is the same with any of them
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast the U-Net call; the scheduler math stays fp32
    channels_last: bool = False  # U-Net weights in NHWC memory layout
    compile: bool = False  # torch.compile the U-Net (unguided sampling only)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"


@dataclass
class EvalConfig:
    """How generated images are judged (see docs/metrics.md)."""

    classifier: str = "auto"  # auto = fairdiff's cached domain CNN; or a path to a TorchScript / ONNX file
    target: list[float] | None = None  # None = uniform over the groups
    bootstrap: int = 1000
    confidence: float = 0.95
    n_samples: int = 1000
    seed: int = 0
    classifier_steps: int = 300  # optimizer steps for the domain CNN (auto classifier)
    fid_features: str | None = None  # None = the classifier's penultimate layer; or a local TorchScript Inception
    pr_k: int = 3  # k of the k-NN manifolds for precision / recall
    batch_size: int = 500  # classifier forward batch
    copy_check: int = 1000  # generated images of a run checked for copies of its training set (0 = skip)


@dataclass
class TextConfig:
    """Text-to-image runs (docs/text-to-image.md): LoRA fine-tuning of a local Stable Diffusion folder under
    prompts, in the same trainer as every other run. ``sd`` unset: a pixel or latent model. At most one of
    ``prompts_file`` (one prompt per line, used in turn), ``prompt_groups`` (a prompt per subset of data.groups)
    and ``prompt_targets`` (method align: a target or ``preserve`` per prompt); none: every image gets ``prompt``."""

    sd: str | None = None  # a local diffusers Stable Diffusion folder (never downloaded)
    prompt: str = "a photo"
    prompts_file: str | None = None
    prompt_groups: str | None = None
    prompt_targets: str | None = None


@dataclass
class RunConfig:
    """Everything one run needs; written as ``config.yaml`` into every run folder."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    text: TextConfig = field(default_factory=TextConfig)


_NAME_CHARS = re.compile(r"[\w.-]+")


def check_run_name(name: str) -> None:
    """``name`` is one plain folder name (``runs/<name>`` and cache folders are made of it): letters, digits,
    '-', '_' and '.', not '.' or '..'; else one line naming the key."""
    if not name or name in (".", "..") or not _NAME_CHARS.fullmatch(name):
        raise ConfigError(f"name: {name!r} is not a plain folder name; use letters, digits, '-', '_' and '.' "
                          f"(no path separators, not '.' or '..')")


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and many tools take 32-bit seeds
BIG = 10**9  # a count no run reaches (steps, images): a typo beyond it is refused instead of tried
MAX_BATCH = 65_536
MAX_RESOLUTION = 2048

# Upper bounds of every number a user can type, (section, key) -> bound; lower bounds are in validate().
# What fits the machine (a batch at a resolution) is checked before training by fairdiff.training.memory.
UPPER_BOUNDS: dict[tuple[str, str], int | float] = {
    ("data", "resolution"): MAX_RESOLUTION, ("data", "size"): 10**8, ("data", "heldout_per_group"): 10**6,
    ("data", "channels"): 4, ("data", "synthetic_size"): 10**7, ("data", "synthetic_classes"): 1000,
    ("data", "seed"): MAX_SEED,
    ("model", "num_train_timesteps"): 100_000, ("model", "vae_latent_channels"): 64, ("model", "lora_rank"): 4096,
    ("model", "lora_alpha"): 1e6, ("model", "vae_kl_weight"): 1e6,
    ("train", "steps"): BIG, ("train", "batch_size"): MAX_BATCH, ("train", "grad_accum"): MAX_BATCH,
    ("train", "lr"): 10.0, ("train", "weight_decay"): 100.0, ("train", "warmup_steps"): BIG,
    ("train", "max_grad_norm"): 1e9, ("train", "log_every"): BIG, ("train", "sample_every"): BIG,
    ("train", "checkpoint_every"): BIG, ("train", "checkpoint_total_limit"): 10**6, ("train", "seed"): MAX_SEED,
    ("sample", "n"): 10**8, ("sample", "batch_size"): MAX_BATCH, ("sample", "eta"): 1.0, ("sample", "seed"): MAX_SEED,
    ("eval", "bootstrap"): 10**6, ("eval", "n_samples"): 10**8, ("eval", "seed"): MAX_SEED,
    ("eval", "classifier_steps"): 10**7, ("eval", "pr_k"): 1000, ("eval", "batch_size"): MAX_BATCH,
    ("eval", "copy_check"): 10**8,
    ("method", "indicator_t_min"): 100_000, ("method", "indicator_t_max"): 100_000, ("method", "num_clusters"): 1000,
    ("method", "align_steps"): 100_000, ("method", "align_classifier_steps"): 10**7, ("method", "ot_draws"): 10**6,
    ("method", "disc_width"): MAX_BATCH, ("method", "disc_steps"): 10**7, ("method", "disc_batch_size"): MAX_BATCH,
    ("method", "disc_lr"): 10.0, ("method", "iw_timestep"): 100_000, ("method", "weight_clip"): 1e9,
    ("method", "reconstruction_weight"): 1e6, ("method", "preserve_weight"): 1e6,
    ("method", "preserve_prompt_weight"): 1e6, ("method", "disc_weight_decay"): 100.0,
}


def check_upper_bounds(cfg: RunConfig) -> None:
    """Every number below its bound in :data:`UPPER_BOUNDS` (and every seed at least 0): one line naming the key."""
    for (section, key), high in UPPER_BOUNDS.items():
        owner = getattr(cfg, section)
        v = getattr(owner, key, None)
        if v is not None and not isinstance(v, bool) and v > high:
            raise ConfigError(f"{section}.{key}: must be at most {high:g}, got {v:g}")
    for section in ("data", "train", "sample", "eval"):
        at_least(getattr(cfg, section), section, 0, "seed")
    for w in cfg.method.indicator_widths:
        if w > MAX_BATCH:
            raise ConfigError(f"method.indicator_widths: every width must be at most {MAX_BATCH}, got {w}")
    ref = cfg.data.reference
    if ref is not None and not isinstance(ref, bool) and ref > 10**8:
        raise ConfigError(f"data.reference: must be at most {10**8:g}, got {ref:g}")


def validate(cfg: RunConfig) -> RunConfig:
    """Value ranges and cross-field checks that a type alone cannot express; one line naming the key."""
    check_finite(cfg)
    check_run_name(cfg.name)
    check_upper_bounds(cfg)
    d = cfg.data
    if len(d.groups) < 2:
        raise ConfigError("data.groups: need at least two groups")
    if len(set(d.groups)) != len(d.groups):
        raise ConfigError(f"data.groups: repeated group in {d.groups}")
    try:
        check_shares(d.shares, len(d.groups), what="data.shares")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if d.resolution < 8 or d.resolution % 4:
        raise ConfigError(f"data.resolution: must be a multiple of 4 and at least 8, got {d.resolution}")
    at_least(d, "data", 0, "heldout_per_group")
    at_least(d, "data", 1, "size", "synthetic_size", "channels")
    at_least(d, "data", 2, "synthetic_classes")
    for name, tgt in (("method.target", cfg.method.target), ("eval.target", cfg.eval.target)):
        if tgt is not None:
            try:
                check_shares(tgt, len(d.groups), what=name)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    if cfg.model.lora and not cfg.model.pretrained:
        raise ConfigError("model.lora fine-tunes adapters on a trained U-Net: set model.pretrained as well")
    mc = cfg.model
    if mc.vae_kl_weight < 0 or mc.vae_latent_channels < 1:
        raise ConfigError("model.vae_kl_weight must be >= 0 and model.vae_latent_channels >= 1")
    if mc.lora_rank < 1 or mc.lora_alpha <= 0 or not mc.lora_targets:
        raise ConfigError("model.lora_rank must be >= 1, model.lora_alpha > 0 and model.lora_targets not empty")
    at_least(mc, "model", 1, "num_train_timesteps")
    t = cfg.train
    at_least(t, "train", 1, "steps", "batch_size", "grad_accum", "log_every", "checkpoint_total_limit")
    at_least(t, "train", 0, "warmup_steps", "sample_every", "checkpoint_every", "weight_decay")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {t.lr}")
    if t.max_grad_norm <= 0:
        raise ConfigError(f"train.max_grad_norm: must be positive, got {t.max_grad_norm}")
    in_range("train.ema_decay", t.ema_decay, 0.0, 1.0)
    in_range("train.adam_beta1", t.adam_beta1, 0.0, 1.0)
    in_range("train.adam_beta2", t.adam_beta2, 0.0, 1.0)
    sc = cfg.sample
    if sc.n < 1 or sc.batch_size < 1 or sc.steps < 1:
        raise ConfigError("sample.n, sample.batch_size and sample.steps must be at least 1")
    at_least(sc, "sample", 0, "eta", "seed")
    if sc.steps > mc.num_train_timesteps:
        raise ConfigError(f"sample.steps: must be at most model.num_train_timesteps ({mc.num_train_timesteps}), "
                          f"got {sc.steps}")
    check_sections(cfg.method, cfg)  # every method's option ranges; the chosen method's own conditions
    e = cfg.eval
    at_least(e, "eval", 0, "bootstrap", "copy_check", "seed")
    at_least(e, "eval", 1, "n_samples", "classifier_steps", "pr_k", "batch_size")
    in_range("eval.confidence", e.confidence, 0.0, 1.0)
    if e.confidence == 0:
        raise ConfigError(f"eval.confidence: must lie in (0, 1), got {e.confidence:g}")
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied and checked."""
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(data, path, value, unknown=lambda key: _unknown_key(key, data))
    return validate(from_dict(RunConfig, data))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        data = loaded
    cfg = from_dict(RunConfig, data)
    return apply_overrides(cfg, overrides or [])


def _unknown_key(key: str, data: dict) -> str:
    if key.startswith("method.") and key.count(".") == 1:
        return unknown_option_message(key, data["method"].get("name"))
    return f"unknown config key '{key}'"


def dump_config(cfg: RunConfig) -> str:
    """The YAML text of ``cfg`` (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from fairdiff.utils.io import atomic_write_text

    atomic_write_text(path, dump_config(cfg))
