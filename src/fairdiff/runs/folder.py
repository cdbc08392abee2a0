"""The run folder's layout: the names of what it holds, its config, and atomic folder replacement."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fairdiff.config import RunConfig, load_config
from fairdiff.errors import RunDirError

CONFIG_FILE = "config.yaml"  # the run's RunConfig, written before training starts
MODEL_DIR = "model"  # the finished model (a diffusers folder, see fairdiff.runs.models)
SAMPLES_DIR = "samples"  # the default samples folder of a run (see fairdiff.runs.samples)
SD_META = "sd.json"  # an sd-finetune run: its base pipeline folder, prompts and LoRA targets


def is_sd_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is an ``sd-finetune`` run (a LoRA on a Stable Diffusion pipeline, not a DDPM model)."""
    return (Path(run_dir) / SD_META).is_file()


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` a run was trained with (its ``config.yaml``); a folder without one is a RunDirError."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.exists():
        raise RunDirError(f"{run_dir} is not a fairdiff run (no {CONFIG_FILE})")
    return load_config(p)


def atomic_dir_replace(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place (:func:`fairdiff.utils.atomic.swap_dir`): an older folder of the
    same name goes to a fresh hidden name first and is removed only afterwards."""
    from fairdiff.utils.atomic import swap_dir

    swap_dir(tmp, final)


def fresh_dir_beside(final: Path, suffix: str = ".tmp") -> Path:
    """A new empty hidden folder beside ``final`` (:func:`fairdiff.utils.atomic.fresh_dir_beside`)."""
    from fairdiff.utils.atomic import fresh_dir_beside as fresh

    return fresh(final, suffix)


def logged_training_seconds(stats: Path) -> float:
    """Training time recorded in ``stats.jsonl``: ``elapsed_s`` restarts at each resume, so the segments add up."""
    if not stats.exists():
        return math.nan
    total, last = 0.0, 0.0
    for line in stats.read_text().splitlines():
        try:
            e = float(json.loads(line).get("elapsed_s", math.nan))
        except (ValueError, AttributeError):
            continue
        if math.isnan(e):
            continue
        if e < last:
            total += last
        last = e
    return total + last
