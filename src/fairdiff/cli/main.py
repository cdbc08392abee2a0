"""``fairdiff`` entry point: one sub-command per library call; user mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from fairdiff import __version__
from fairdiff.errors import FairdiffError
from fairdiff.utils.io import DiskFullError, disk_full_message, is_disk_full

# each module has register(subparsers); its sub-commands set ``func(args) -> int``
COMMAND_MODULES = ["fairdiff.cli.run_cmds", "fairdiff.cli.data_cmds", "fairdiff.cli.debias_cmds",
                   "fairdiff.cli.base_cmds"]
OPTIONAL_MODULES = ["fairdiff.cli.eval_cmds", "fairdiff.cli.method_cmds", "fairdiff.cli.bench_cmds",
                    "fairdiff.cli.sd_cmds", "fairdiff.cli.audit_cmds"]
OPTIONAL_MODULES.append("fairdiff.cli.sd_guide_cmds")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exactly one line on stderr, exit 2 (argparse's own code)
        message = " ".join(str(message).split())
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


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
    parser.set_defaults(_subparsers=sub)
    return parser


def _is_override(text: str) -> bool:
    """``key.sub=value`` (a dotted config override), as opposed to a stray option or file name."""
    key = text.split("=", 1)[0]
    return "=" in text and not text.startswith("-") and bool(key) and " " not in key and "/" not in key


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; dotted overrides are accepted anywhere, also after options (``--out R train.lr=1e-4``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [x for x in extra if not _is_override(x)]
        if stray or not isinstance(getattr(args, "overrides", None), list):
            sub = getattr(args, "_subparsers", None)
            owner = sub.choices.get(getattr(args, "command", None) or "", parser) if sub is not None else parser
            owner.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


# Bad input that reaches the library as a plain Python exception: a user path that cannot be read or written,
# a user file that is truncated or not what it claims to be. Printed as one line; anything else is a bug and
# keeps its traceback.
def _bad_input_classes() -> tuple[type[BaseException], ...]:
    import json
    import zipfile

    classes: list[type[BaseException]] = [json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile]
    try:
        from safetensors import SafetensorError

        classes.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(classes)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        reason = e.strerror or type(e).__name__
        return f"cannot use {e.filename}: {reason}"
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{text} ({type(e).__name__})"


# how to continue after an interruption or a full disk, per command (default: run the same command again)
_CONTINUE = {"train": "continue with --resume latest", "sd-finetune": "continue with --resume latest",
             "bench": "run the same command again to continue", "audit": "run the same command again to continue",
             "sweep": "run the same command again to continue",
             "debias": "run the same command again to continue", "sample": "run the same command again to continue",
             "evaluate": "run the same command again to continue"}


def _disk_full_line(command: str | None, text: str) -> str:
    hint = _CONTINUE.get(command or "", "run the same command again")
    return f"error: {text}; free space and {hint}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        print("error: fairdiff: give a command (see 'fairdiff --help')", file=sys.stderr)
        return 2
    command = getattr(args, "command", None)
    try:
        return int(args.func(args) or 0)
    except DiskFullError as e:
        print(_disk_full_line(command, " ".join(str(e).split())), file=sys.stderr)
        return 2
    except FairdiffError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`fairdiff ... | head`): stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as e:
        if is_disk_full(e):  # a full disk or quota, wherever it struck: one line, never a writer's traceback
            print(_disk_full_line(command, disk_full_message(e.filename, e, kept=False)), file=sys.stderr)
            return 2
        if e.filename is None:  # not about a path the user gave: a bug or a machine fault, keep the traceback
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except _bad_input_classes() as e:
        if is_disk_full(e):  # safetensors reports a full disk as its own error
            print(_disk_full_line(command, disk_full_message(None, e, kept=False)), file=sys.stderr)
            return 2
        print(f"error: a file could not be read: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if str(e):  # the command's own account (train: the step it saved a checkpoint at)
            print(str(e), file=sys.stderr)
            return 128 + int(getattr(e, "signum", 2))
        hint = _CONTINUE.get(command or "", "")
        print("interrupted; completed work is kept" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
