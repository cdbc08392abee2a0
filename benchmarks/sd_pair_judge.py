"""A TorchScript judge of one digit pair for `heads fit --sd` (benchmarks/sd_known_bias.sh): the cached MNIST
domain CNN of the config's data (3 channels, 16 px), its logits for the config's groups (the first columns).

    .venv/bin/python benchmarks/sd_pair_judge.py p01.yaml judge01.pt [--validation]

``--validation``: the validation domain CNN (seed eval.seed + 1, the one ``debias --sd --judge auto`` keeps and
steers with), so that heads fitted on it never see the judge that scores.
"""
import sys

import torch

from fairdiff.config import load_config
from fairdiff.data import cache_dir
from fairdiff.evaluation.judges import load_classifier, load_validation_judge
from fairdiff.models.classifier import DomainCNN

args = [a for a in sys.argv[1:] if a != "--validation"]
cfg = load_config(args[0], [])
clf = (load_validation_judge if "--validation" in sys.argv else load_classifier)("auto", cfg.data, cfg.eval)
model = DomainCNN.from_pretrained(cache_dir() / "classifiers" / clf.info["key"] / "model").eval()
k = len(cfg.data.groups)


class Pair(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[:, :k]


shape = (2, cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
torch.jit.trace(Pair(model), torch.zeros(shape)).save(args[1])
print("wrote", args[1], clf.info["key"])
