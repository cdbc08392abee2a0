"""Debiasing a trained model toward a requested target distribution (``fairdiff debias``).

:mod:`.filter`: generate-and-filter, the reference every method is compared with (the base's images, judged by the
validation judge, kept to the target's quotas). :mod:`.run`: the output folders and their evaluation; ``distill``
fine-tunes the base on its own filtered images, so that it samples at the target with no overhead.
"""

from fairdiff.debias.filter import FilterResult, filter_to_target, quotas
from fairdiff.debias.run import debias_run, distill_run

__all__ = ["FilterResult", "debias_run", "distill_run", "filter_to_target", "quotas"]
