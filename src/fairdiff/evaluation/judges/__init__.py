"""The judges of generated images: anything that maps uint8 images ``[N, C, H, W]`` to group logits.

One module per kind: :mod:`.base` (the :class:`Classifier` interface, :func:`from_callable`), :mod:`.domain`
(the cached domain CNN, the ``auto`` judge), :mod:`.faces_mini` (faces-mini's ONNX judge), :mod:`.onnx`,
:mod:`.torchscript`, :mod:`.features` (the Inception feature extractor) and :mod:`.pca` (the second,
independent judge). :func:`load_classifier` turns an ``eval.classifier`` value into a judge.
"""

from __future__ import annotations

from pathlib import Path

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import Classifier, from_callable
from fairdiff.evaluation.judges.domain import DomainClassifierConfig, domain_classifier
from fairdiff.evaluation.judges.faces_mini import faces_mini_classifier
from fairdiff.evaluation.judges.features import FeatureExtractor, inception_features
from fairdiff.evaluation.judges.onnx import onnx_classifier
from fairdiff.evaluation.judges.pca import pca_judge, second_judge
from fairdiff.evaluation.judges.torchscript import torchscript_classifier

__all__ = ["Classifier", "DomainClassifierConfig", "FeatureExtractor", "domain_classifier", "faces_mini_classifier",
           "from_callable", "inception_features", "load_classifier", "load_validation_judge", "onnx_classifier",
           "pca_judge", "second_judge", "torchscript_classifier"]


def load_classifier(spec: str | Classifier | None, data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """``auto`` (or None) -> the cached domain CNN (for faces-mini: its gender-v1 ONNX model);
    ``*.onnx`` -> ONNX; ``*.pt``/``*.pts``/``*.ts`` -> TorchScript."""
    if isinstance(spec, Classifier):
        return spec
    if spec is None or spec == "auto":
        if getattr(data_cfg, "source", None) == "faces-mini":
            return faces_mini_classifier(data_cfg, eval_cfg, progress=progress)
        return domain_classifier(data_cfg, eval_cfg, progress=progress)
    p = Path(spec)
    if p.suffix == ".onnx":
        return onnx_classifier(p)
    if p.suffix in (".pt", ".pts", ".ts", ".torchscript", ".jit"):
        return torchscript_classifier(p)
    raise FairdiffError(f"unknown classifier '{spec}' (use 'auto', an .onnx file or a TorchScript .pt file)")


VALIDATION_SEED_OFFSET = 1  # the validation judge's seed is eval.seed + 1; the test judge's is eval.seed


def load_validation_judge(spec: str | Classifier | None, data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """The judge that *chooses* (filters images, tunes a knob): never the one that scores the result.

    ``auto`` (or None) -> the domain CNN trained with seed ``eval.seed + 1`` (the test judge of ``fairdiff evaluate``
    uses ``eval.seed``: another initialisation and another draw of training images from the same classes). For
    faces-mini the only gender model there is is used for both (said in the report). A path or a Classifier is
    used as given.
    """
    if spec is None or spec == "auto":
        if getattr(data_cfg, "source", None) == "faces-mini":
            return faces_mini_classifier(data_cfg, eval_cfg, progress=progress)
        clf_cfg = DomainClassifierConfig()
        if eval_cfg is not None:
            clf_cfg.steps = eval_cfg.classifier_steps
            clf_cfg.seed = eval_cfg.seed + VALIDATION_SEED_OFFSET
        else:
            clf_cfg.seed = VALIDATION_SEED_OFFSET
        return domain_classifier(data_cfg, eval_cfg, clf_cfg=clf_cfg, progress=progress)
    return load_classifier(spec, data_cfg, eval_cfg, progress=progress)
