"""``fairdiff`` entry point: one sub-command per library call; user mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from fairdiff import __version__
from fairdiff.errors import FairdiffError

# each module has register(subparsers); its sub-commands set ``func(args) -> int``
COMMAND_MODULES = ["fairdiff.cli.run_cmds", "fairdiff.cli.data_cmds"]
OPTIONAL_MODULES = ["fairdiff.cli.eval_cmds", "fairdiff.cli.method_cmds", "fairdiff.cli.bench_cmds",
                    "fairdiff.cli.sd_cmds"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fairdiff", description="Train, debias, sample and audit diffusion models for fairness.")
    parser.add_argument("--version", action="version", version=f"fairdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        import_module(name).register(sub)
    for name in OPTIONAL_MODULES:
        try:
            mod = import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FairdiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if str(e):  # the command's own account (train: the step it saved a checkpoint at)
            print(str(e), file=sys.stderr)
            return 128 + int(getattr(e, "signum", 2))
        hint = {"train": "continue with --resume latest", "bench": "run the same command again to continue",
                "sweep": "run the same command again to continue"}.get(getattr(args, "command", None) or "", "")
        print("interrupted; completed work is kept" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
