"""Shared fixtures: tiny configs on synthetic data, an isolated cache folder, few threads."""

from __future__ import annotations


import pytest
import torch

# one thread: tiny tensors gain little from two, and oversubscribed cores slow torch down badly
torch.set_num_threads(1)

def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, for tests of its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = [
    "data.source=synthetic", "data.resolution=16", "data.synthetic_size=240", "data.heldout_per_group=20",
    "model.preset=tiny", "train.batch_size=8", "train.log_every=2", "train.warmup_steps=2",
    "sample.steps=5", "sample.batch_size=16", "eval.n_samples=32", "eval.bootstrap=100",
]


def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the collected tests in a random order drawn from SEED (every test must pass in any "
                          "order; module-scoped fixtures are rebuilt as often as the order needs)")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:
        import random

        random.Random(seed).shuffle(items)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_session(tmp_path_factory):
    """Module and session fixtures are built before any function fixture: they see the temporary cache too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "fairdiff-cache"))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "fairdiff-cache"
    monkeypatch.setenv("FAIRDIFF_CACHE", str(cache))
    # MNIST, when fetched on this machine, may still be used by opt-in tests
    yield


def tiny_bench_yaml(steps: int) -> str:
    """A one-setting, one-method bench config on the TINY overrides (what several CLI tests run)."""
    return ("name: tiny\nseeds: [0]\noverrides:\n"
            + "".join(f"  {t.split('=', 1)[0]}: {t.split('=', 1)[1]}\n" for t in TINY)
            + f"  train.steps: {steps}\nsettings:\n  a: {{data.shares: [0.75, 0.25]}}\nmethods:\n  baseline: {{}}\n")


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


class CornerJudge(torch.nn.Module):
    """A two-group judge with a known answer: group 1 when the top-left pixel is at least as bright as the
    bottom-right one (mean over channels), else group 0; saturated logits (always confident)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.where((x[:, :, 0, 0] - x[:, :, -1, -1]).mean(dim=1) >= 0, 1000.0, -1000.0)
        return torch.stack([-s, s], 1)


def corner_group(images):
    """What :class:`CornerJudge` says about uint8 images, computed without it."""
    import numpy as np

    d = images[:, :, 0, 0].astype(np.float64).mean(1) - images[:, :, -1, -1].astype(np.float64).mean(1)
    return (d >= 0).astype(np.int64)


@pytest.fixture(scope="session")
def corner_judge_file(tmp_path_factory):
    """The corner judge saved as TorchScript (what ``--judge`` / ``--classifier`` take)."""
    path = tmp_path_factory.mktemp("judges") / "corner.pt"
    torch.jit.script(CornerJudge()).save(str(path))
    return path


class Brightness(torch.nn.Module):
    """A two-group judge of an image's mean value (in [-1, 1]): group 1 (bright) above ``threshold``, else group 0
    (dark); the logits are ``-+ (mean - threshold) * scale`` (the default scale saturates them)."""

    def __init__(self, threshold: float = 0.0, scale: float = 1000.0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x.mean(dim=(1, 2, 3)) - self.threshold) * self.scale
        return torch.stack([-m, m], 1)


def brightness(images):
    """The mean of uint8 images mapped to [-1, 1], per image: what :class:`Brightness` thresholds."""
    import numpy as np

    return (images.astype(np.float64) / 127.5 - 1.0).mean(axis=(1, 2, 3))
