"""fairdiff: train, debias, sample and audit image diffusion models for group fairness.

The public API is small and explicit::

    from fairdiff import load_config, train, sample_run
    cfg = load_config("configs/demo.yaml", ["train.steps=200"])
    train(cfg, "runs/demo")
    sample_run("runs/demo", n=1000)
"""

__version__ = "0.1.0"

from fairdiff.config import RunConfig, load_config  # noqa: E402
from fairdiff.errors import FairdiffError  # noqa: E402


def __getattr__(name: str):
    # heavy imports (torch, diffusers) only when used
    if name == "train":
        from fairdiff.training import train

        return train
    if name == "sample_run":
        from fairdiff.sampling import sample_run

        return sample_run
    if name == "prepare_data":
        from fairdiff.data import prepare_data

        return prepare_data
    raise AttributeError(name)


__all__ = ["RunConfig", "load_config", "FairdiffError", "train", "sample_run", "prepare_data", "__version__"]
