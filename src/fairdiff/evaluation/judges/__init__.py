"""The judges of generated images: anything that maps uint8 images ``[N, C, H, W]`` to group logits.

One module per kind: :mod:`.base` (the :class:`Classifier` interface, :func:`from_callable`), :mod:`.domain`
(the cached domain CNN, the ``auto`` judge), :mod:`.faces_mini` (faces-mini's ONNX judge), :mod:`.onnx`,
:mod:`.torchscript`, :mod:`.features` (the Inception feature extractor) and :mod:`.pca` (the second,
independent judge). :mod:`.registry` lists them; :func:`load_classifier` turns an ``eval.classifier`` value into
a judge through it.
"""

from __future__ import annotations

from fairdiff.evaluation.judges.base import Classifier, from_callable
from fairdiff.evaluation.judges.domain import DomainClassifierConfig, domain_classifier
from fairdiff.evaluation.judges.faces_mini import faces_mini_classifier
from fairdiff.evaluation.judges.features import FeatureExtractor, inception_features
from fairdiff.evaluation.judges.onnx import onnx_classifier
from fairdiff.evaluation.judges.pca import pca_judge, second_judge
from fairdiff.evaluation.judges.registry import JUDGES, JudgeEntry, judge_entry
from fairdiff.evaluation.judges.torchscript import torchscript_classifier

__all__ = ["JUDGES", "Classifier", "JudgeEntry", "judge_entry",
           "DomainClassifierConfig", "FeatureExtractor", "domain_classifier", "faces_mini_classifier",
           "from_callable", "inception_features", "load_classifier", "load_validation_judge", "onnx_classifier",
           "pca_judge", "second_judge", "torchscript_classifier"]


def load_classifier(spec: str | Classifier | None, data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """A judge value -> the judge (judges/registry.py): ``auto`` (or None) -> the data source's judge, else the
    cached domain CNN; a registered name; ``*.onnx`` -> ONNX; ``*.pt``/``*.pts``/``*.ts`` -> TorchScript."""
    if isinstance(spec, Classifier):
        return spec
    return judge_entry(spec, data_cfg).load(spec, data_cfg, eval_cfg, progress=progress)


VALIDATION_SEED_OFFSET = 1  # the validation judge's seed is eval.seed + 1; the test judge's is eval.seed


def load_validation_judge(spec: str | Classifier | None, data_cfg, eval_cfg=None, progress: bool = False) -> Classifier:
    """The judge that *chooses* (filters images, tunes a knob): never the one that scores the result.

    ``auto`` (or None) -> the domain CNN trained with seed ``eval.seed + 1`` (the test judge of ``fairdiff evaluate``
    uses ``eval.seed``: another initialisation and another draw of training images from the same classes). For
    faces-mini the only gender model there is is used for both (said in the report). A path or a Classifier is
    used as given.
    """
    if isinstance(spec, Classifier):
        return spec
    return judge_entry(spec, data_cfg).load(spec, data_cfg, eval_cfg, seed_offset=VALIDATION_SEED_OFFSET,
                                            progress=progress)
