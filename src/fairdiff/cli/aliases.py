"""Old spellings of commands and flags (issue 27's one vocabulary): they keep working, hidden from ``--help``, and
name the new spelling in one stderr line.

A command renamed is a sub-parser added without ``help=`` (argparse then leaves it out of the command list) through
:func:`old_command`; a flag renamed is a hidden option with :class:`OldFlag`. The command's function, wrapped by
:func:`with_notes`, prints the notes after it succeeds (as an :class:`OldSpelling` warning: shown by default, one
line each); when it fails, the note is added to the one error line instead (a mistake stays exactly one line on
stderr).
"""

from __future__ import annotations

import argparse
import sys

# old spelling -> new spelling (README and docs/cli.md show this table; tests/unit/test_cli_vocabulary.py runs it)
OLD_COMMANDS = {
    "fairdiff sd-sample": "fairdiff sample",
    "fairdiff sd-guide sample": "fairdiff sample --sd",
    "fairdiff sd-guide fit-heads": "fairdiff heads fit --sd",
    "fairdiff train-heads": "fairdiff heads fit",
    "fairdiff sd-export": "fairdiff export",
    "fairdiff sd-init": "fairdiff data tiny-sd",
    "fairdiff sd-finetune": "fairdiff train --sd",
    "fairdiff train-vae": "fairdiff train --vae",
}
OLD_FLAGS = {
    "fairdiff sample --guidance": "fairdiff sample --heads",
    "fairdiff sample --loss": "fairdiff sample --guidance-loss",
    "fairdiff sample --guidance-scale": "fairdiff sample --cfg-scale",
    "fairdiff heads fit --guidance-scale": "fairdiff heads fit --cfg-scale",
    "fairdiff audit --guidance-scale": "fairdiff audit --cfg-scale",
    "fairdiff evaluate --classifier": "fairdiff evaluate --judge",
    "fairdiff train --prompts-file": "fairdiff train --prompts",
}

# the flag a message names for an option (its new spelling; :func:`flag` gives the one the user typed)
CANONICAL = {"heads": "--heads", "judge": "--judge", "cfg_scale": "--cfg-scale", "guidance_loss": "--guidance-loss",
             "prompts_file": "--prompts"}


def note(old: str, new: str) -> str:
    return f"note: '{old}' is now '{new}'; the old spelling still works"


def old_command(sub, name: str, new: str, **kwargs) -> argparse.ArgumentParser:
    """A hidden sub-parser ``name`` (no ``help=``: not listed) whose command is now spelt ``new``. Its function must
    be set through :func:`set_func` (or wrapped by :func:`with_notes`) so the note is printed."""
    p = sub.add_parser(name, **kwargs)
    mark_old(p, new)
    return p


def mark_old(p: argparse.ArgumentParser, new: str) -> None:
    """``p`` (a command or a command's action) is an old spelling of ``new``: the note goes with its result, and with
    its parse errors too."""
    text = note(p.prog, new)
    p.set_defaults(_alias_note=text)
    plain = p.error

    def error(message: str) -> None:
        plain(f"{' '.join(str(message).split())} ({text})")

    p.error = error  # type: ignore[method-assign]


class OldFlag(argparse.Action):
    """A hidden old spelling of a flag: stores into the new flag's ``dest`` and records the note and the spelling
    typed (:func:`flag`)."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        notes = list(getattr(namespace, "_flag_notes", None) or [])
        text = note(f"{parser.prog} {option_string}", f"{parser.prog} {self.new}")
        if text not in notes:
            notes.append(text)
        setattr(namespace, "_flag_notes", notes)
        typed = dict(getattr(namespace, "_spelling", None) or {})
        typed[self.dest] = option_string
        setattr(namespace, "_spelling", typed)


def old_flag(p, old: str, new: str, dest: str, **kwargs) -> None:
    """Add ``old`` as a hidden alias of the flag ``new`` (whose ``dest`` is ``dest``)."""
    p.add_argument(old, dest=dest, action=OldFlag, new=new, default=argparse.SUPPRESS, **kwargs)


def flag(args: argparse.Namespace, dest: str, default: str | None = None) -> str:
    """The spelling of ``dest``'s flag for a message: the one the user typed (an old one too), else the new one."""
    typed = getattr(args, "_spelling", None) or {}
    return typed.get(dest) or default or CANONICAL.get(dest) or "--" + dest.replace("_", "-")


def notes_of(args: argparse.Namespace) -> list[str]:
    out = [getattr(args, "_alias_note", None), *(getattr(args, "_flag_notes", None) or [])]
    return [n for n in out if n]


def _add_note(e: BaseException, text: str) -> bool:
    """Put ``text`` at the end of the one line the CLI prints for ``e``; False when it cannot."""
    from fairdiff.errors import FairdiffError
    from fairdiff.utils.io import DiskFullError, is_disk_full

    if isinstance(e, DiskFullError) or is_disk_full(e):  # its line ends in how to continue: left as it is
        return False
    if isinstance(e, FairdiffError) and type(e).__str__ is BaseException.__str__:
        e.args = (f"{' '.join(str(e).split())} ({text})",)
        return True
    if isinstance(e, OSError) and e.filename is not None:
        e.strerror = f"{e.strerror or type(e).__name__} ({text})"
        return True
    return False


class OldSpelling(FutureWarning):
    """An old spelling of a command or flag was used (shown by default; ``PYTHONWARNINGS=ignore::FutureWarning``
    silences it, as test suites that filter FutureWarning do)."""


def show_note(text: str) -> None:
    """``text`` as one stderr line, through :mod:`warnings` (so the warning filters decide whether it is shown)."""
    import warnings

    plain = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OldSpelling):
            print(str(message), file=file if file is not None else sys.stderr)
        else:  # pragma: no cover - another warning raised meanwhile
            plain(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        warnings.warn(text, OldSpelling, stacklevel=2)
    finally:
        warnings.showwarning = plain


def with_notes(func):
    """Wrap a command: after it succeeds, print its notes (old spellings used) on stderr, one line each; when it
    fails with a user mistake, the notes join the one error line."""
    if getattr(func, "_with_notes", False):
        return func

    def run(args: argparse.Namespace) -> int:
        notes = notes_of(args)
        if not notes:
            return func(args)
        try:
            rc = func(args)
        except Exception as e:
            _add_note(e, "; ".join(notes))
            raise
        for text in notes:
            show_note(text)
        return rc

    run._with_notes = True  # type: ignore[attr-defined]
    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


def set_func(p: argparse.ArgumentParser, func) -> None:
    p.set_defaults(func=with_notes(func))
