"""The baseline: plain noise-prediction MSE, with no debiasing."""

from fairdiff.methods.base import Objective


class BaselineObjective(Objective):
    """L = E ||eps_hat - eps||^2."""

    name = "baseline"
