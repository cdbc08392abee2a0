"""Typed run configuration.

A run is described by one :class:`RunConfig` made of sections (data, model, method, train, sample, eval).
Configs come from YAML files and dotted command-line overrides (``train.lr=2e-4 data.shares=[0.8,0.2]``);
unknown keys and values of the wrong type are rejected with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fairdiff.errors import ConfigError


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
    train_on: Literal["train", "reference"] = "train"  # "reference": train on the reference set alone (a baseline)


@dataclass
class ModelConfig:
    """The denoiser: a diffusers U-Net preset and the noise schedule."""

    preset: Literal["tiny", "small", "base"] = "tiny"
    conditional: bool = False  # condition the U-Net on the group (the conditional scenario)
    pretrained: str | None = None  # a run or model folder whose U-Net initialises this one (fine-tuning)
    prediction_type: Literal["epsilon"] = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    # latent diffusion (docs/latent.md): a trained VAE folder (``fairdiff train-vae``); None = pixel space
    vae: str | None = None
    vae_preset: Literal["tiny", "small"] = "tiny"  # the VAE that ``train-vae`` builds
    vae_latent_channels: int = 4
    vae_kl_weight: float = 1e-6  # KL term of the VAE loss (reconstruction MSE + kl_weight * KL)
    # LoRA fine-tuning of a Stable-Diffusion-shaped model (``fairdiff sd-finetune``)
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_v", "query", "value"])
    lora_text_encoder: bool = False  # also LoRA on the text encoder's q_proj / v_proj
    # LoRA on the pixel / latent U-Net of the main trainer (fine-tuning from ``pretrained``; merged on save)
    lora: bool = False
    unet_lora_targets: list[str] = field(
        default_factory=lambda: ["conv1", "conv2", "to_q", "to_k", "to_v"]
    )


@dataclass
class MethodConfig:
    """The training objective (baseline, ddm, reweight, align) and its options."""

    name: Literal["baseline", "ddm", "reweight", "align", "tiw", "iw"] = "baseline"
    alpha: float = 0.05  # DDM debiasing strength
    reconstruction_weight: float | None = None  # DDM; None = 1 - alpha
    indicator_widths: list[int] = field(default_factory=lambda: [1024, 512])
    indicator_input: Literal["eps", "x0"] = "eps"
    # DDM variants (docs/ddm-analysis.md); the defaults are the published method
    indicator_ce: Literal["plain", "balanced"] = "plain"  # balanced: CE weighted inversely to group frequency
    indicator_grad: Literal["cooperative", "detach", "reverse"] = "cooperative"  # how the CE reaches the denoiser
    indicator_t_min: int = 0  # the indicator term applies only to timesteps in [t_min, t_max)
    indicator_t_max: int | None = None  # None = num_train_timesteps
    labels: Literal["attribute", "clusters"] = "attribute"  # where per-image groups come from
    num_clusters: int | None = None  # clusters mode; None = number of groups
    cluster_features: Literal["pca"] = "pca"
    target: list[float] | None = None  # reweighting / alignment target shares; None = uniform
    # distributional alignment fine-tuning (methods/align.py; needs model.pretrained)
    align_steps: int = 10  # DDIM steps of the generation chain that the gradient goes through
    align_classifier: str = "auto"  # training classifier: auto = a CNN unlike the evaluation one; or TorchScript
    align_classifier_steps: int = 300  # optimizer steps for the auto training classifier
    preserve_weight: float = 1.0  # weight of the preservation term (1 - cos of features vs the frozen model)
    uncertainty_threshold: float = 0.2  # K > 2: drop targets whose averaged OT assignment is less sure than this
    ot_draws: int = 10  # K > 2: target-count draws whose optimal-transport plans are averaged
    # tiw / iw (methods/tiw.py): the noise-aware discriminator d(x_t, t), reference (1) vs training (0), fitted
    # before the denoiser trains (training/discriminator.py) and frozen after
    disc_width: int = 32
    disc_steps: int = 500  # optimizer steps of the discriminator fit
    disc_batch_size: int = 64  # per class: each batch holds this many reference and as many training images
    disc_lr: float = 1.0e-3
    disc_weight_decay: float = 1.0e-4
    disc_holdout: float = 0.2  # share of reference and training images kept out of the fit, for calibration
    weight_clip: float | None = 20.0  # the ratio is clipped to [1/c, c] before per-batch normalisation; None = off
    iw_timestep: int = 0  # iw: the timestep at which the time-independent ratio is read (on the clean image)


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


# ---------------------------------------------------------------------------------------------------------
# conversion with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (with YAML's int->float widening)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "2e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every number in the config is finite (``.nan`` / ``.inf`` from YAML or an override are refused)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{prefix}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix}: must be a finite number, got {node}")


def _at_least(owner: Any, section: str, low: int | float, *keys: str) -> None:
    for key in keys:
        v = getattr(owner, key)
        if v is not None and v < low:
            raise ConfigError(f"{section}.{key}: must be at least {low}, got {v}")


def _in_range(key: str, v: float, low: float, high: float, closed_high: bool = False) -> None:
    if not (low <= v <= high if closed_high else low <= v < high):
        raise ConfigError(f"{key}: must lie in [{low:g}, {high:g}{']' if closed_high else ')'}, got {v:g}")


def validate(cfg: RunConfig) -> RunConfig:
    """Value ranges and cross-field checks that a type alone cannot express; one line naming the key."""
    _check_finite(cfg)
    d = cfg.data
    if len(d.groups) < 2:
        raise ConfigError("data.groups: need at least two groups")
    if len(set(d.groups)) != len(d.groups):
        raise ConfigError(f"data.groups: repeated group in {d.groups}")
    if len(d.shares) != len(d.groups):
        raise ConfigError(f"data.shares: {len(d.shares)} shares for {len(d.groups)} groups")
    if any(s < 0 for s in d.shares) or abs(sum(d.shares) - 1.0) > 1e-6:
        raise ConfigError(f"data.shares: must be non-negative and sum to 1, got {d.shares} (sum {sum(d.shares):g})")
    if d.resolution < 8 or d.resolution % 4:
        raise ConfigError(f"data.resolution: must be a multiple of 4 and at least 8, got {d.resolution}")
    _at_least(d, "data", 0, "heldout_per_group")
    _at_least(d, "data", 1, "size", "synthetic_size", "channels")
    _at_least(d, "data", 2, "synthetic_classes")
    for name, tgt in (("method.target", cfg.method.target), ("eval.target", cfg.eval.target)):
        if tgt is not None:
            if len(tgt) != len(d.groups):
                raise ConfigError(f"{name}: {len(tgt)} values for {len(d.groups)} groups")
            if any(t < 0 for t in tgt) or abs(sum(tgt) - 1.0) > 1e-6:
                raise ConfigError(f"{name}: must be non-negative and sum to 1, got {tgt}")
    m = cfg.method
    if not 0.0 <= m.alpha <= 1.0:
        raise ConfigError(f"method.alpha: must lie in [0, 1], got {m.alpha}")
    _at_least(m, "method", 0, "reconstruction_weight", "preserve_weight")
    _at_least(m, "method", 2, "num_clusters")
    _at_least(m, "method", 1, "align_classifier_steps")
    if any(w < 1 for w in m.indicator_widths):
        raise ConfigError(f"method.indicator_widths: every width must be at least 1, got {m.indicator_widths}")
    if cfg.model.lora and not cfg.model.pretrained:
        raise ConfigError("model.lora fine-tunes adapters on a trained U-Net: set model.pretrained as well")
    if m.name == "align":
        if cfg.model.vae or cfg.model.conditional:
            raise ConfigError("method align: only unconditional pixel-space models for now "
                              "(no model.vae / conditional)")
        if not cfg.model.pretrained:
            raise ConfigError("method align fine-tunes a trained model: set model.pretrained to a run or model folder")
        if m.align_steps < 1 or m.ot_draws < 1 or m.preserve_weight < 0:
            raise ConfigError("method.align_steps and method.ot_draws must be >= 1, method.preserve_weight >= 0")
        if not 0.0 <= m.uncertainty_threshold <= 1.0:
            raise ConfigError(f"method.uncertainty_threshold: must lie in [0, 1], got {m.uncertainty_threshold}")
    mc = cfg.model
    if mc.vae_kl_weight < 0 or mc.vae_latent_channels < 1:
        raise ConfigError("model.vae_kl_weight must be >= 0 and model.vae_latent_channels >= 1")
    if mc.lora_rank < 1 or mc.lora_alpha <= 0 or not mc.lora_targets:
        raise ConfigError("model.lora_rank must be >= 1, model.lora_alpha > 0 and model.lora_targets not empty")
    _at_least(mc, "model", 1, "num_train_timesteps")
    t = cfg.train
    _at_least(t, "train", 1, "steps", "batch_size", "grad_accum", "log_every", "checkpoint_total_limit")
    _at_least(t, "train", 0, "warmup_steps", "sample_every", "checkpoint_every", "weight_decay")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be positive, got {t.lr}")
    if t.max_grad_norm <= 0:
        raise ConfigError(f"train.max_grad_norm: must be positive, got {t.max_grad_norm}")
    _in_range("train.ema_decay", t.ema_decay, 0.0, 1.0)
    _in_range("train.adam_beta1", t.adam_beta1, 0.0, 1.0)
    _in_range("train.adam_beta2", t.adam_beta2, 0.0, 1.0)
    sc = cfg.sample
    if sc.n < 1 or sc.batch_size < 1 or sc.steps < 1:
        raise ConfigError("sample.n, sample.batch_size and sample.steps must be at least 1")
    _at_least(sc, "sample", 0, "eta")
    for key, steps in (("sample.steps", sc.steps), ("method.align_steps", m.align_steps)):
        if steps > mc.num_train_timesteps:
            raise ConfigError(f"{key}: must be at most model.num_train_timesteps ({mc.num_train_timesteps}), "
                              f"got {steps}")
    e = cfg.eval
    _at_least(e, "eval", 0, "bootstrap")
    _at_least(e, "eval", 1, "n_samples", "classifier_steps", "pr_k", "batch_size")
    _in_range("eval.confidence", e.confidence, 0.0, 1.0)
    if e.confidence == 0:
        raise ConfigError(f"eval.confidence: must lie in (0, 1), got {e.confidence:g}")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': cannot read value {raw!r}") from None
    return key.split("."), value


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied and checked."""
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config key '{'.'.join(path[: i + 1])}'")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"unknown config key '{'.'.join(path)}'")
        node[path[-1]] = value
    return validate(from_dict(RunConfig, data))


def read_yaml_file(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> Any:
    """The parsed YAML of ``path``; a missing file or invalid YAML is one ``error`` line naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {p} is not valid YAML: {str(e).splitlines()[0]}") from None


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


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from fairdiff.utils.io import atomic_write_text

    atomic_write_text(path, dump_config(cfg))
