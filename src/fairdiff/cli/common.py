"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse

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
