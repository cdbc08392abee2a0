"""Methods that describe themselves: one :class:`MethodEntry` per method.

Each entry says what the rest of fairdiff needs to know about a method, so that the trainer, the config, the
bench and the CLI ask here and never compare method names:

- its config section (an options dataclass of :mod:`fairdiff.method_options`) and that section's validation;
- what it needs: per-image group labels (attribute or clusters), an unlabeled reference set, a trained model to
  start from (a bench lists it ``after: baseline`` by default);
- the modules it saves with the model (``model/<module>/``), its training objective (imported when built), or,
  for a sampling-time method (guidance), its sampling-time hooks;
- a one-line description for reports (``ddm (alpha 0.05)``).

Objectives and sampling-time hooks are imported when asked for, not when this module is.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from fairdiff.errors import ConfigError
from fairdiff.method_options import (
    AlignOptions,
    BaselineOptions,
    DDMOptions,
    GuidanceOptions,
    ReweightOptions,
    TIWOptions,
    options_of,
)


def _load(spec: str) -> Any:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class MethodEntry:
    """What one method is, needs and saves. A training method has ``objective``; a sampling-time one has
    ``sampling_hooks`` instead and no ``method.name`` value."""

    name: str
    summary: str  # one line for listings and docs
    options: type  # its config section (a dataclass); for a training method, a section of the run config
    objective: str | None = None  # "module:Class" of the training objective; None for a sampling-time method
    uses_groups: bool = False  # per-image group labels (the attribute or method.labels=clusters) reach it
    uses_reference: bool = False  # needs an unlabeled reference set (data.reference or data.reference_dir)
    needs_pretrained: bool = False  # starts from a trained model (model.pretrained, or a bench's ``after``)
    modules: tuple[str, ...] = ()  # modules it trains and saves as model/<module>/ beside the U-Net
    detail: Callable[[Any], str] | None = None  # a short note from its options for reports ("alpha 0.05")
    sampling_hooks: dict[str, str] = field(default_factory=dict)  # sampling-time: role -> "module:attr"
    # its objective has a per-prompt form (``objective.with_prompts``) for text-to-image runs (--prompt-targets)
    takes_prompts: bool = False

    @property
    def sampling_time(self) -> bool:
        """True for a method applied while sampling a trained model (it trains nothing)."""
        return self.objective is None

    @property
    def default_after(self) -> str | None:
        """The method whose trained model a bench cell of this method starts from when the bench lists it by
        name only (``methods: [baseline, align]``)."""
        return "baseline" if self.needs_pretrained else None

    def section(self, method_cfg: Any) -> Any:
        """This method's own options read from a flat method config (``cfg.method``)."""
        if self.sampling_time:
            raise ConfigError(f"method {self.name} is applied at sampling time; it has no method.* section")
        return options_of(method_cfg, self.name)

    def validate(self, options: Any, run_cfg: Any) -> None:
        """The options' value ranges, then the conditions this method puts on the rest of the run config."""
        options.check()
        options.check_run(run_cfg)

    def build(self, method_cfg: Any) -> Any:
        """The training objective, configured from this method's section of ``method_cfg`` only."""
        if self.objective is None:
            raise ConfigError(f"method {self.name} trains nothing (it is applied at sampling time)")
        return _load(self.objective).from_config(self.section(method_cfg))

    def describe(self, method_cfg: Any = None, bold: bool = False) -> str:
        """One line for reports: ``ddm (alpha 0.05)``; ``bold`` marks the name for markdown."""
        name = f"**{self.name}**" if bold else self.name
        note = self.detail(self.section(method_cfg)) if self.detail and method_cfg is not None else ""
        return f"{name} ({note})" if note else name

    def hook(self, role: str) -> Any:
        """A sampling-time hook (``fit``, ``load``, ``guide``), imported now."""
        if role not in self.sampling_hooks:
            raise KeyError(f"method {self.name} has no sampling-time hook '{role}'")
        return _load(self.sampling_hooks[role])


_ENTRIES = (
    MethodEntry("baseline", "plain noise-prediction MSE, no debiasing", BaselineOptions,
                objective="fairdiff.methods.baseline:BaselineObjective"),
    MethodEntry("ddm", "DDM: a latent-space indicator reads eps_hat and predicts the group (cooperative loss)",
                DDMOptions, objective="fairdiff.methods.ddm:DDMObjective", uses_groups=True,
                modules=("indicator",), detail=lambda o: f"alpha {o.alpha}"),
    MethodEntry("reweight", "importance weights target(g) / data_share(g) on the denoising loss", ReweightOptions,
                objective="fairdiff.methods.reweight:ReweightObjective", uses_groups=True),
    MethodEntry("align", "distributional alignment fine-tuning of a trained model toward a target",
                AlignOptions, objective="fairdiff.methods.align:AlignObjective", uses_groups=True,
                needs_pretrained=True, takes_prompts=True),
    MethodEntry("tiw", "label-free: time-dependent importance reweighting with score correction (reference set)",
                TIWOptions, objective="fairdiff.methods.tiw:TIWObjective", uses_reference=True,
                modules=("discriminator",)),
    MethodEntry("iw", "label-free: time-independent importance weighting on the clean image (reference set)",
                TIWOptions, objective="fairdiff.methods.tiw:IWObjective", uses_reference=True,
                modules=("discriminator",)),
    MethodEntry("guidance", "Distribution Guidance: per-step attribute heads steer sampling of a trained model",
                GuidanceOptions, uses_groups=True, needs_pretrained=True,
                sampling_hooks={"fit": "fairdiff.training.heads:train_heads",
                                "load": "fairdiff.methods.guidance:load_heads",
                                "guide": "fairdiff.methods.guidance:DistributionGuidance"}),
)
REGISTRY: dict[str, MethodEntry] = {e.name: e for e in _ENTRIES}


def method_names(kind: str = "all") -> list[str]:
    """Registered method names: ``all``, ``training`` (values of ``method.name``) or ``sampling``."""
    if kind not in ("all", "training", "sampling"):
        raise ValueError(f"kind must be all, training or sampling, got {kind!r}")
    return [n for n, e in REGISTRY.items()
            if kind == "all" or (kind == "sampling") == e.sampling_time]


def find_method(name: str) -> MethodEntry | None:
    """The entry of ``name``, or None when no method has that name."""
    return REGISTRY.get(name)


def get_method(name: str) -> MethodEntry:
    """The entry of ``name``; an unknown name is one ConfigError line listing the known ones."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(REGISTRY)})")
    return entry


def build_objective(method_cfg: Any) -> Any:
    """The training objective that ``method_cfg.name`` names, configured from its own section."""
    return get_method(method_cfg.name).build(method_cfg)


def describe(method_cfg: Any, bold: bool = False) -> str:
    """One line for reports of the method of a run config's method section: ``ddm (alpha 0.05)``."""
    return get_method(method_cfg.name).describe(method_cfg, bold=bold)


def uses_clusters(method_cfg: Any) -> bool:
    """True when the chosen method uses groups and takes them from k-means clusters (``method.labels``)."""
    entry = get_method(method_cfg.name)
    return entry.uses_groups and getattr(entry.section(method_cfg), "labels", "attribute") == "clusters"


def uses_reference(method_cfg: Any) -> bool:
    """True when the chosen method needs the unlabeled reference set before training."""
    return get_method(method_cfg.name).uses_reference


def saved_modules(method_cfg: Any) -> tuple[str, ...]:
    """The modules the chosen method saves as ``model/<module>/``."""
    return get_method(method_cfg.name).modules
