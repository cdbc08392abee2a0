"""Alignment on prompts (methods/align_prompts.py): the spec, the prompt split, and the loss's gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.methods.align import AlignObjective
from fairdiff.methods.align_prompts import parse_prompt_targets, split_prompts
from fairdiff.methods.base import DataInfo


def test_parse_prompt_targets():
    t = parse_prompt_targets({"a doctor": [0.5, 0.5], "a nurse": "uniform", "a cat": "preserve"}, 2)
    assert [x.prompt for x in t] == ["a doctor", "a nurse", "a cat"] and [x.index for x in t] == [0, 1, 2]
    assert t[0].target.tolist() == [0.5, 0.5] and t[1].target.tolist() == [0.5, 0.5] and t[2].target is None
    for raw, needle in [({"a": [0.6, 0.6]}, "sum to 1"), ({"a": [1.0]}, "2 groups"), ({"a": "preserve"}, "every"),
                        ({"a": [-0.5, 1.5]}, "non-negative"), ({}, "expected a mapping"), ({"a": None}, "give target"),
                        ({"a": [0.5, 0.5], " a ": "preserve"}, "same text")]:
        with pytest.raises(ConfigError, match=needle):
            parse_prompt_targets(raw, 2)


def test_split_prompts():
    assert split_prompts(5, 2).tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ConfigError, match="smaller than the number of prompts"):
        split_prompts(1, 2)


class _Out:
    def __init__(self, sample):
        self.sample = sample


class ToyModel(nn.Module):
    """eps = a per-prompt constant + a small conv of x: the prompt decides the generated mean."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3, 1))
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x, t, class_labels=None, prompt_index=None):
        return _Out(self.conv(x) * 0.1 + self.bias[prompt_index].view(-1, 1, 1, 1))


class MeanClassifier(nn.Module):
    def forward_features(self, x):
        m = x.mean(dim=(1, 2, 3)) * 10
        logits = torch.stack([-m, m], 1)
        return logits, logits.softmax(1)


def _objective(spec, preserve_prompt_weight=1.0):
    from diffusers import DDPMScheduler

    base = AlignObjective(steps=3, preserve_weight=0.0, classifier="unused")
    obj = base.with_prompts(parse_prompt_targets(spec, 2), decode=lambda z: z[:, :1].tanh(),
                            classifier_images=torch.zeros(4, 1, 4, 4), preserve_prompt_weight=preserve_prompt_weight)
    obj.setup(DataInfo(2, [2, 2], (2, 4, 4)))
    model = ToyModel()
    obj.frozen = ToyModel().requires_grad_(False)
    obj.frozen.load_state_dict(model.state_dict())
    obj.classifier = MeanClassifier()
    return obj, model, DDPMScheduler(num_train_timesteps=100)


def test_loss_gradients_reach_only_the_aligned_prompts_and_preserve_is_zero_at_start():
    obj, model, sched = _objective({"a": [1.0, 0.0], "b": "preserve", "c": [0.0, 1.0]})
    batch = {"pixel_values": torch.zeros(12, 2, 4, 4)}
    out = obj.loss(model, batch, sched, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.total)
    assert float(out.parts["preserve_prompts"]) == pytest.approx(0.0, abs=1e-12)  # same weights as the frozen one
    out.total.backward()
    g = model.bias.grad.flatten()
    assert g[1] == 0  # the preserved prompt's own parameter gets no gradient while it matches the frozen model
    # target 'all group 0' (dark) for a pushes its eps up (x0 = x - c eps: darker), 'all group 1' for c down
    assert g[0] < 0 < g[2]
    assert {"align_ce", "preserve", "kept", "gen_share_0_1", "gen_share_2_0"} <= set(out.parts)


def test_preservation_pulls_a_changed_prompt_back():
    obj, model, sched = _objective({"a": [0.5, 0.5], "b": "preserve"}, preserve_prompt_weight=5.0)
    with torch.no_grad():
        model.bias[1] += 0.5  # prompt b drifted
    out = obj.loss(model, {"pixel_values": torch.zeros(8, 2, 4, 4)}, sched, torch.Generator().manual_seed(1))
    assert float(out.parts["preserve_prompts"]) > 0
    out.total.backward()
    assert model.bias.grad[1].item() > 0  # descending moves bias[1] back toward the frozen 0
    np.testing.assert_allclose(out.total.item(), float(out.parts["align_ce"])
                               + 5.0 * float(out.parts["preserve_prompts"]), rtol=1e-5)
