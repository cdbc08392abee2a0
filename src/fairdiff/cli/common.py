"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairdiff.config import RunConfig, dump_config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (defaults are used when omitted)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=2e-4")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace) -> RunConfig | None:
    """Load config + overrides; with --dry-run print it and return None."""
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dump_config(cfg), end="")
        return None
    return cfg


def check_out(folder: str | Path, kind: str, *, overwrite: bool = False, inputs=(), legacy: dict | None = None,
              reuse: bool = False, whole: bool = False) -> str:
    """Check an output folder before any work (see :func:`fairdiff.utils.outputs.check_output_dir`)."""
    from fairdiff.utils.outputs import check_output_dir

    return check_output_dir(folder, kind, overwrite=overwrite, inputs=inputs, legacy_files=legacy, reuse=reuse,
                            whole=whole)


def mark_out(folder: str | Path, kind: str) -> None:
    """Mark a finished output folder as fairdiff's own (``.fairdiff.json``) unless it already carries a marker."""
    from fairdiff.utils.outputs import read_marker, write_marker

    if Path(folder).is_dir() and read_marker(folder) is None:
        write_marker(folder, kind)


def check_out_file(path: str | Path, looks_ours, what: str) -> Path:
    """An output *file*: its folder must be writable, and an existing file is replaced only if fairdiff wrote it
    (``looks_ours(path) -> bool``)."""
    import os

    from fairdiff.errors import FairdiffError

    p = Path(path)
    if p.is_dir():
        raise FairdiffError(f"{what} {p} is a folder; give a file name")
    if p.exists() and not looks_ours(p):
        raise FairdiffError(f"{what} {p} exists and was not written by fairdiff; choose another file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FairdiffError(f"{what} {p} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FairdiffError(f"{what} {p} is not writable ({parent}: permission denied)")
    return p


SAMPLE_FLAGS = {"batch_size": "--batch-size", "steps": "--steps", "scheduler": "--scheduler", "eta": "--eta"}


def resolve_sample_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the sampling flags left out (None) from the run's ``sample.*`` settings in its config.yaml; a
    folder without one (a diffusers model folder) takes the :class:`~fairdiff.config.SampleConfig` defaults."""
    missing = [k for k in SAMPLE_FLAGS if getattr(args, k, None) is None]
    if not missing:
        return args
    from fairdiff.config import SampleConfig
    from fairdiff.errors import FairdiffError
    from fairdiff.runs import read_run_config

    sc = SampleConfig()
    if (Path(args.run) / "config.yaml").is_file():
        try:
            sc = read_run_config(args.run).sample
        except FairdiffError as e:
            flags = ", ".join(SAMPLE_FLAGS[k] for k in missing)
            raise FairdiffError(f"cannot take the sampling settings from {Path(args.run) / 'config.yaml'} ({e}); "
                                f"give {flags}") from None
    for k in missing:
        setattr(args, k, getattr(sc, k))
    return args
