"""Bench configs: a methods x bias-settings x seeds matrix described in one YAML file.

A bench config names a base run config, the bias settings (each a set of dotted overrides), the methods (dotted
overrides plus two options: ``after`` and ``guidance``) and the training seeds; :func:`expand_cells` turns it into
one :class:`BenchCell` per (setting, method, seed), ordered so that a cell's ``after`` cell runs before it. The
format is documented in docs/bench.md; like the run config, unknown keys are rejected with one line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from fairdiff.bench.matrix import Cell
from fairdiff.config import from_dict, load_config, read_yaml_file
from fairdiff.errors import ConfigError
from fairdiff.method_options import GuidanceOptions as GuidanceSpec  # Distribution Guidance options of a cell
from fairdiff.methods.registry import find_method

TOP_KEYS = ("name", "base", "overrides", "seeds", "settings", "methods")
METHOD_KEYS = ("after", "guidance", "overrides")
# a guidance cell trains nothing: only these sections of its own overrides can change what it does
GUIDANCE_SECTIONS = ("sample", "eval")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class BenchConfigError(ConfigError):
    """A bench config (or a ``fairdiff bench`` option) is wrong."""


@dataclass
class MethodSpec:
    """One row of every setting's table: overrides, and optionally the method whose model it reuses."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    after: str | None = None  # the method whose cell (same setting and seed) this one fine-tunes or guides
    guidance: GuidanceSpec | None = None  # set: a sampling-time method (no training)


@dataclass
class BenchConfig:
    """A parsed bench config; ``base`` is already resolved relative to the bench file."""

    name: str
    base: Path | None
    overrides: dict[str, Any]
    seeds: list[int]
    settings: dict[str, dict[str, Any]]
    methods: dict[str, MethodSpec]


@dataclass
class BenchCell(Cell):
    """A cell of the bench matrix (``name`` is ``<setting>/<method>-s<seed>``)."""

    after: str | None = None  # name of the cell whose model this one starts from (fine-tuning) or guides
    guidance: GuidanceSpec | None = None


# ------------------------------------------------------------------------------------------------ parsing
def _overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BenchConfigError(f"{where}: expected a mapping of dotted overrides, got {value!r}")
    for k in value:
        if not isinstance(k, str) or not k:
            raise BenchConfigError(f"{where}: override keys must be dotted names like train.lr, got {k!r}")
    return dict(value)


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BenchConfigError(f"{where}: name {name!r} must be letters, digits and . _ + - (used as a folder name)")
    return name


def _method(name: str, entry: Any) -> MethodSpec:
    where = f"methods.{name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise BenchConfigError(f"{where}: expected a mapping (dotted overrides, after, guidance), got {entry!r}")
    spec = MethodSpec(name)
    for k, v in entry.items():
        if isinstance(k, str) and "." in k:
            spec.overrides[k] = v
        elif k == "overrides":
            spec.overrides.update(_overrides(v, f"{where}.overrides"))
        elif k == "after":
            if not isinstance(v, str):
                raise BenchConfigError(f"{where}.after: expected a method name, got {v!r}")
            spec.after = v
        elif k == "guidance":
            if v is True or isinstance(v, dict):
                spec.guidance = from_dict(GuidanceSpec, v if isinstance(v, dict) else {}, prefix=f"{where}.guidance")
            elif v is not False and v is not None:
                raise BenchConfigError(f"{where}.guidance: expected true/false or a mapping of options, got {v!r}")
        else:
            raise BenchConfigError(f"unknown key '{where}.{k}' (known: {', '.join(METHOD_KEYS)} or dotted overrides "
                                   "such as method.name)")
    registered = find_method(name)
    if "method.name" not in spec.overrides and spec.guidance is None and registered and not registered.sampling_time:
        spec.overrides["method.name"] = name  # `reweight: {}` trains reweight, not the base config's method
    return spec


def _list_default(name: str) -> dict:
    """The entry that a bare name in the list form (``methods: [baseline, ddm, guidance]``) stands for: the
    registered method of that name, after the method it needs a trained model from (align, guidance)."""
    entry = find_method(name)
    if entry is None:
        return {"method.name": name}  # an unknown name fails with the run config's own message
    out: dict[str, Any] = {"guidance": True} if entry.sampling_time else {"method.name": name}
    if entry.default_after:
        out["after"] = entry.default_after
    return out


def _methods(value: Any) -> dict[str, MethodSpec]:
    if isinstance(value, list):
        entries: dict[str, Any] = {}
        for item in value:
            if isinstance(item, str):
                entries[item] = _list_default(item)
            elif isinstance(item, dict) and len(item) == 1:
                entries.update(item)
            else:
                raise BenchConfigError(f"methods: list items must be a method name or a one-key mapping, got {item!r}")
        value = entries
    if not isinstance(value, dict) or not value:
        raise BenchConfigError("methods: expected a non-empty mapping (name -> overrides) or list of names")
    methods = {_check_name(k, "methods"): _method(k, v) for k, v in value.items()}
    for m in methods.values():
        where = f"methods.{m.name}"
        if m.after is not None:
            if m.after not in methods:
                raise BenchConfigError(f"{where}.after: no method named '{m.after}' (known: {', '.join(methods)})")
            if m.after == m.name:
                raise BenchConfigError(f"{where}.after: a method cannot come after itself")
            if methods[m.after].guidance is not None:
                raise BenchConfigError(f"{where}.after: '{m.after}' is a guidance method and trains no model")
        if m.guidance is not None:
            if m.after is None:
                raise BenchConfigError(f"{where}: guidance needs 'after: METHOD', the trained model it guides")
            bad = [k for k in m.overrides if k.split(".")[0] not in GUIDANCE_SECTIONS]
            if bad:
                raise BenchConfigError(f"{where}: a guidance cell trains nothing; only sample.* and eval.* overrides "
                                       f"apply (got {', '.join(bad)})")
    _order(methods)  # rejects cycles
    return methods


def _order(methods: dict[str, MethodSpec]) -> list[str]:
    """Method names in config order, except that each comes after the method it names in ``after``."""
    done: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise BenchConfigError(f"methods: 'after' forms a cycle ({cycle})")
        visiting.append(name)
        if methods[name].after:
            visit(methods[name].after)
        visiting.pop()
        done.append(name)

    for n in methods:
        visit(n)
    return done


def parse_bench_config(data: Any, where: Path | None = None) -> BenchConfig:
    """Build a :class:`BenchConfig` from a loaded YAML mapping; ``where`` (the file) anchors ``base``."""
    if not isinstance(data, dict):
        raise BenchConfigError("a bench config must hold a mapping at top level")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise BenchConfigError(f"unknown bench config key '{unknown[0]}' (known: {', '.join(TOP_KEYS)})")
    name = _check_name(data.get("name") or (where.stem if where else "bench"), "name")
    base = None
    if data.get("base") is not None:
        if not isinstance(data["base"], str):
            raise BenchConfigError(f"base: expected a path to a run config, got {data['base']!r}")
        base = Path(os.path.normpath((where.parent if where else Path(".")) / data["base"]))
        if not base.is_file():
            raise BenchConfigError(f"base: run config not found: {base}")
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise BenchConfigError(f"seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    settings = data.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise BenchConfigError("settings: expected a non-empty mapping (name -> dotted overrides)")
    settings = {_check_name(k, "settings"): _overrides(v, f"settings.{k}") for k, v in settings.items()}
    return BenchConfig(name=name, base=base, overrides=_overrides(data.get("overrides"), "overrides"), seeds=seeds,
                       settings=settings, methods=_methods(data.get("methods")))


def load_bench_config(path: str | Path) -> BenchConfig:
    """Read and check a bench YAML file (every cell's run config is checked too, see :func:`check_cells`)."""
    p = Path(path)
    return parse_bench_config(read_yaml_file(p, "bench config", BenchConfigError), p)


# ------------------------------------------------------------------------------------------------ cells
def override_strings(overrides: dict[str, Any]) -> list[str]:
    """``{"data.shares": [0.8, 0.2]}`` -> ``["data.shares=[0.8, 0.2]"]`` (values written so YAML reads them back)."""
    out = []
    for k, v in overrides.items():
        text = v if isinstance(v, str) and yaml.safe_load(v) == v else json.dumps(v)
        out.append(f"{k}={text}")
    return out


def cell_name(setting: str, method: str, seed: int) -> str:
    return f"{setting}/{method}-s{seed}"


def expand_cells(cfg: BenchConfig, out_dir: str | Path, seeds: list[int] | None = None) -> list[BenchCell]:
    """Every (setting, method, seed) cell, settings in config order, methods so that ``after`` comes first.

    A training cell with ``after: M`` gets ``model.pretrained`` = M's cell folder (same setting and seed); a
    guidance cell takes M's resolved overrides (its data, model and sampling) plus its own sample / eval ones.
    """
    cells_dir = Path(out_dir) / "cells"
    order = _order(cfg.methods)
    cells: list[BenchCell] = []
    for setting, s_ov in cfg.settings.items():
        for seed in seeds if seeds is not None else cfg.seeds:
            by_method: dict[str, BenchCell] = {}
            for m in order:
                spec = cfg.methods[m]
                name = cell_name(setting, m, seed)
                after = cell_name(setting, spec.after, seed) if spec.after else None
                if spec.guidance is not None:
                    ov = [*by_method[spec.after].overrides, *override_strings(spec.overrides)]
                else:
                    ov = [*override_strings(cfg.overrides), *override_strings(s_ov), *override_strings(spec.overrides),
                          f"train.seed={seed}"]
                    if after:
                        ov.append(f"model.pretrained={cells_dir / after}")
                by_method[m] = BenchCell(name, setting, ov, seed, method=m, after=after, guidance=spec.guidance)
            cells.extend(by_method[m] for m in order)
    # group by setting then method (seeds inner); `after` cells still precede their dependants
    rank = {m: i for i, m in enumerate(order)}
    settings = list(cfg.settings)
    return sorted(cells, key=lambda c: (settings.index(c.setting), rank[c.method], c.seed))


def check_cells(cfg: BenchConfig, cells: list[BenchCell]) -> None:
    """Resolve every cell's run config now, so a bad key fails in a second and not after hours of training."""
    for c in cells:
        try:
            load_config(cfg.base, c.overrides)
        except ConfigError as e:
            raise BenchConfigError(f"cell {c.name}: {e}") from None


def select_cells(cells: list[BenchCell], only: str | None) -> list[BenchCell]:
    """Cells matching any comma-separated glob in ``only`` (against the cell name, its setting or its method),
    plus the cells they depend on through ``after``; all cells when ``only`` is None."""
    if not only:
        return list(cells)
    globs = [g.strip() for g in only.split(",") if g.strip()]
    picked = {c.name for c in cells if any(fnmatch(c.name, g) or fnmatch(c.setting, g) or fnmatch(c.method, g)
                                           for g in globs)}
    if not picked:
        raise BenchConfigError(f"--only {only}: matches no cell (cells look like {cells[0].name})")
    by_name = {c.name: c for c in cells}
    stack = list(picked)
    while stack:
        dep = by_name[stack.pop()].after
        if dep and dep not in picked:
            picked.add(dep)
            stack.append(dep)
    return [c for c in cells if c.name in picked]
