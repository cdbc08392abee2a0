"""The judges fairdiff knows: one entry per kind, as methods have theirs (:mod:`fairdiff.methods.registry`).

An ``eval.classifier`` / ``--judge`` value is resolved here: ``auto`` (or nothing) picks the judge registered
for the data's source (faces-mini's ONNX gender model), else the default (the domain CNN); a registered name
picks that judge; a file picks the judge whose suffixes match. Each entry names a loader
``load(spec, data_cfg, eval_cfg, *, seed_offset, progress) -> Classifier`` in the judge's own module, so a new
judge is one file plus one entry below. ``seed_offset`` makes the validation judge (the one that chooses)
another draw than the test judge (the one that scores) where the judge is trained here; fixed judges ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from fairdiff.errors import FairdiffError


@dataclass(frozen=True)
class JudgeEntry:
    name: str
    summary: str  # one line for listings and docs
    loader: str  # "module:function" with the signature above
    suffixes: tuple[str, ...] = ()  # a file judge: the file suffixes it loads
    sources: tuple[str, ...] = ()  # the data sources whose 'auto' judge it is
    default: bool = False  # the 'auto' judge of every other source

    def load(self, spec, data_cfg, eval_cfg=None, *, seed_offset: int = 0, progress: bool = False):
        module, fn = self.loader.split(":")
        return getattr(import_module(module), fn)(spec, data_cfg, eval_cfg, seed_offset=seed_offset,
                                                  progress=progress)


JUDGES: dict[str, JudgeEntry] = {e.name: e for e in (
    JudgeEntry("domain", "a small CNN trained on the data's held-out real images by group (cached by its data)",
               "fairdiff.evaluation.judges.domain:load", default=True),
    JudgeEntry("faces-mini", "faces-mini's shipped ONNX gender model (the same for validation and test)",
               "fairdiff.evaluation.judges.faces_mini:load", sources=("faces-mini",)),
    JudgeEntry("onnx", "an ONNX classifier file (uint8 images -> group logits)",
               "fairdiff.evaluation.judges.onnx:load", suffixes=(".onnx",)),
    JudgeEntry("torchscript", "a TorchScript classifier file ([-1, 1] images -> group logits)",
               "fairdiff.evaluation.judges.torchscript:load",
               suffixes=(".pt", ".pts", ".ts", ".torchscript", ".jit")),
)}


def judge_entry(spec: str | None, data_cfg=None) -> JudgeEntry:
    """The registry entry for a judge value (see the module docstring); unknown values are one line."""
    if spec is None or spec == "auto":
        source = getattr(data_cfg, "source", None)
        for e in JUDGES.values():
            if source in e.sources:
                return e
        return next(e for e in JUDGES.values() if e.default)
    if spec in JUDGES and not JUDGES[spec].suffixes:
        return JUDGES[spec]
    suffix = Path(spec).suffix
    for e in JUDGES.values():
        if suffix and suffix in e.suffixes:
            return e
    names = ", ".join(n for n, e in JUDGES.items() if not e.suffixes)
    files = ", ".join(s for e in JUDGES.values() for s in e.suffixes)
    raise FairdiffError(f"unknown classifier '{spec}' (use 'auto', a judge name ({names}) or a file: {files})")
