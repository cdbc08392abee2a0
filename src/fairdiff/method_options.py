"""The options of each method, one dataclass per method: its section of the run config.

Users still write them as flat ``method.<option>`` keys (``method.alpha=0.1``, ``method.disc_steps=150``); the
run config's method section (:class:`fairdiff.config.MethodConfig`) is the union of these dataclasses plus
``name``, in this order, so config files and the ``config.yaml`` written into run folders keep their shape.
Which method owns which section, and what else each method needs, is in :mod:`fairdiff.methods.registry`.

The rule for options of another method than ``method.name``: they are accepted, type- and range-checked like any
key, and have no effect (each method is built from its own section only, :func:`options_of`). This keeps bench
files that set, say, ``method.disc_steps`` for every cell, config files meant to be switched between methods
with ``method.name=...``, and the full ``config.yaml`` of every earlier run folder valid. A key that no method
has is rejected with one line naming the chosen method and its options (:func:`unknown_option_message`).

Two kinds of checks live here, each one line naming the key: ``check()`` (value ranges of the section's own
options, run for every section) and ``check_run(cfg)`` (cross-section conditions, run for the chosen method
only; ``cfg`` is the whole :class:`~fairdiff.config.RunConfig`). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from fairdiff.errors import ConfigError

GroupLabels = Literal["attribute", "clusters"]  # where per-image groups come from (methods that use groups)
# method.labels=clusters: k-means, or spectral clustering of the 10-nearest-neighbour graph (data/clusters.py)
Clustering = Literal["kmeans", "spectral"]
# reweight: each image's loss weighted toward the target, or batches drawn at the target with a plain loss
Balance = Literal["weights", "resample"]
BALANCES: tuple[str, ...] = typing.get_args(Balance)


def _at_least(owner: Any, low: int | float, *keys: str) -> None:
    for key in keys:
        v = getattr(owner, key)
        if v is not None and v < low:
            raise ConfigError(f"method.{key}: must be at least {low}, got {v}")


@dataclass
class BaselineOptions:
    """The baseline (plain noise-prediction MSE) has no options."""

    def check(self) -> None:
        """Nothing to check."""

    def check_run(self, cfg: Any) -> None:
        """Nothing to check."""


@dataclass
class DDMOptions:
    """DDM (methods/ddm.py); the variant options (docs/ddm-analysis.md) default to the published method."""

    alpha: float = 0.05  # DDM debiasing strength
    reconstruction_weight: float | None = None  # None = 1 - alpha
    indicator_widths: list[int] = field(default_factory=lambda: [1024, 512])
    indicator_input: Literal["eps", "x0"] = "eps"
    indicator_ce: Literal["plain", "balanced"] = "plain"  # balanced: CE weighted inversely to group frequency
    indicator_grad: Literal["cooperative", "detach", "reverse"] = "cooperative"  # how the CE reaches the denoiser
    indicator_t_min: int = 0  # the indicator term applies only to timesteps in [t_min, t_max)
    indicator_t_max: int | None = None  # None = num_train_timesteps
    labels: GroupLabels = "attribute"
    num_clusters: int | None = None  # clusters mode; None = number of groups
    cluster_features: Literal["pca"] = "pca"
    clustering: Clustering = "kmeans"  # clusters mode: how the training images are clustered

    def check(self) -> None:
        """Value ranges of the DDM options."""
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha: must lie in [0, 1], got {self.alpha}")
        _at_least(self, 0, "reconstruction_weight")
        _at_least(self, 2, "num_clusters")
        if any(w < 1 for w in self.indicator_widths):
            raise ConfigError(f"method.indicator_widths: every width must be at least 1, got {self.indicator_widths}")

    def check_run(self, cfg: Any) -> None:
        """The indicator window must be a non-empty range of timesteps."""
        t_min, t_max = self.indicator_t_min, self.indicator_t_max
        if t_min < 0 or (t_max is not None and t_max <= t_min):
            raise ConfigError(f"method.indicator_t_min/t_max: need 0 <= t_min < t_max, got {t_min}, {t_max}")


@dataclass
class ReweightOptions:
    """Group reweighting of the denoising loss (methods/reweight.py)."""

    labels: GroupLabels = "attribute"
    num_clusters: int | None = None
    cluster_features: Literal["pca"] = "pca"
    clustering: Clustering = "kmeans"  # clusters mode: how the training images are clustered
    target: list[float] | None = None  # target group shares; None = uniform
    # weights: every image's loss weighted by target / data share; resample: batches drawn with those
    # probabilities and the loss left unweighted (the same objective in expectation, a lower-variance gradient)
    balance: Balance = "weights"

    def check(self) -> None:
        """Value ranges (``target`` is checked against ``data.groups`` for every method by the run config)."""
        _at_least(self, 2, "num_clusters")

    def check_run(self, cfg: Any) -> None:
        """Nothing beyond the ranges."""


@dataclass
class AlignOptions:
    """Distributional alignment fine-tuning of a trained model (methods/align.py, docs/align.md)."""

    labels: GroupLabels = "attribute"
    num_clusters: int | None = None
    cluster_features: Literal["pca"] = "pca"
    clustering: Clustering = "kmeans"  # clusters mode: how the training images are clustered
    target: list[float] | None = None  # target group shares of what is generated; None = uniform
    align_steps: int = 10  # DDIM steps of the generation chain that the gradient goes through
    align_classifier: str = "auto"  # training classifier: auto = a CNN unlike the evaluation one; or TorchScript
    align_classifier_steps: int = 300  # optimizer steps for the auto training classifier
    preserve_weight: float = 1.0  # weight of the preservation term (1 - cos of features vs the frozen model)
    # sd-finetune --prompt-targets: weight of the pixel MSE that keeps 'preserve' prompts' images unchanged
    preserve_prompt_weight: float = 1.0
    uncertainty_threshold: float = 0.2  # K > 2: drop targets whose averaged OT assignment is less sure than this
    ot_draws: int = 10  # K > 2: target-count draws whose optimal-transport plans are averaged

    def check(self) -> None:
        """Value ranges of the alignment options."""
        _at_least(self, 2, "num_clusters")
        _at_least(self, 0, "preserve_weight")
        _at_least(self, 0, "preserve_prompt_weight")
        _at_least(self, 1, "align_classifier_steps")

    def check_run(self, cfg: Any) -> None:
        """Alignment fine-tunes a trained unconditional pixel-space model with a chain no longer than the schedule."""
        if cfg.model.vae or cfg.model.conditional:
            raise ConfigError("method align: only unconditional pixel-space models for now "
                              "(no model.vae / conditional)")
        if not cfg.model.pretrained:
            raise ConfigError("method align fine-tunes a trained model: set model.pretrained to a run or model folder")
        if self.align_steps < 1 or self.ot_draws < 1:
            raise ConfigError("method.align_steps and method.ot_draws must be >= 1, method.preserve_weight >= 0")
        if not 0.0 <= self.uncertainty_threshold <= 1.0:
            raise ConfigError(f"method.uncertainty_threshold: must lie in [0, 1], got {self.uncertainty_threshold}")
        if self.align_steps > cfg.model.num_train_timesteps:
            raise ConfigError(f"method.align_steps: must be at most model.num_train_timesteps "
                              f"({cfg.model.num_train_timesteps}), got {self.align_steps}")


@dataclass
class TIWOptions:
    """tiw / iw (methods/tiw.py, docs/tiw.md): the noise-aware discriminator d(x_t, t), reference (1) vs training
    (0), fitted before the denoiser trains (training/discriminator.py) and frozen after."""

    disc_width: int = 32
    disc_steps: int = 500  # optimizer steps of the discriminator fit
    disc_batch_size: int = 64  # per class: each batch holds this many reference and as many training images
    disc_lr: float = 1.0e-3
    disc_weight_decay: float = 1.0e-4
    disc_holdout: float = 0.2  # share of reference and training images kept out of the fit, for calibration
    weight_clip: float | None = 20.0  # the ratio is clipped to [1/c, c] before per-batch normalisation; None = off
    iw_timestep: int = 0  # iw: the timestep at which the time-independent ratio is read (on the clean image)

    def check(self) -> None:
        """Value ranges of the discriminator and weighting options."""
        if self.weight_clip is not None and self.weight_clip < 1.0:
            raise ConfigError(f"method.weight_clip: must be >= 1 (or null), got {self.weight_clip}")
        if not 0.0 <= self.disc_holdout < 1.0:
            raise ConfigError(f"method.disc_holdout: must lie in [0, 1), got {self.disc_holdout}")
        _at_least(self, 1, "disc_width", "disc_steps", "disc_batch_size")
        if self.disc_lr <= 0 or self.disc_weight_decay < 0:
            raise ConfigError("method.disc_lr must be > 0 and method.disc_weight_decay >= 0")
        _at_least(self, 0, "iw_timestep")

    def check_run(self, cfg: Any) -> None:
        """The reference set itself is checked when the data is prepared (data/reference.py)."""


@dataclass
class GuidanceOptions:
    """Distribution Guidance (a sampling-time method, docs/guidance.md); set per bench method, not in a run config."""

    scale: float = 3000.0
    temperature: float | None = None  # None: 8 for a uniform target, 1 otherwise (see docs/guidance.md)
    loss: Literal["chi2", "kl"] = "chi2"
    n_per_step: int = 512  # training images used to fit each step's head
    mode: Literal["invert", "noise"] = "invert"


# the training methods (``method.name``) and their sections; tiw and iw share theirs
SECTIONS: dict[str, type] = {
    "baseline": BaselineOptions,
    "ddm": DDMOptions,
    "reweight": ReweightOptions,
    "align": AlignOptions,
    "tiw": TIWOptions,
    "iw": TIWOptions,
}
MethodName = Literal[tuple(SECTIONS)]  # type: ignore[valid-type]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def union_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """``(name, type, field)`` of every option of every section, first declaration first (``make_dataclass``
    form). An option declared by several sections must have the same type and default in each."""
    seen: dict[str, tuple[Any, dataclasses.Field, str]] = {}
    for cls in dict.fromkeys(SECTIONS.values()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                tp, g, owner = seen[f.name]
                if tp != hints[f.name] or _default(g) != _default(f):
                    raise TypeError(f"option '{f.name}' of {cls.__name__} differs from the one of {owner}")
                continue
            seen[f.name] = (hints[f.name], f, cls.__name__)
    out = []
    for name, (tp, f, _) in seen.items():
        if f.default_factory is not dataclasses.MISSING:
            out.append((name, tp, field(default_factory=f.default_factory)))
        else:
            out.append((name, tp, field(default=f.default)))
    return out


def section_type(name: str) -> type:
    """The options dataclass of training method ``name``."""
    try:
        return SECTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(SECTIONS)})") from None


def options_of(method_cfg: Any, name: str | None = None) -> Any:
    """The section of method ``name`` (default ``method_cfg.name``) read from a flat method config: an instance
    of its own options dataclass, holding only the options that method has."""
    cls = section_type(name or method_cfg.name)
    return cls(**{f.name: getattr(method_cfg, f.name) for f in dataclasses.fields(cls)})


def option_names(name: str) -> list[str]:
    """The options of training method ``name`` (its ``method.<option>`` keys besides ``name``)."""
    return [f.name for f in dataclasses.fields(section_type(name))]


def unknown_option_message(key: str, method: Any) -> str:
    """One line for a ``method.*`` key that no method has, naming the chosen method and its options."""
    name = method if method in SECTIONS else "baseline"
    own = option_names(name)
    has = f"the options {', '.join(own)}" if own else "no options"
    return (f"unknown config key '{key}': method {name} has {has} besides method.name "
            f"(other methods: {', '.join(n for n in SECTIONS if n != name)})")


def check_sections(method_cfg: Any, cfg: Any) -> None:
    """Every section's value ranges, then the chosen method's cross-section conditions (one line each)."""
    for cls in dict.fromkeys(SECTIONS.values()):
        options_of(method_cfg, next(n for n, c in SECTIONS.items() if c is cls)).check()
    options_of(method_cfg).check_run(cfg)
