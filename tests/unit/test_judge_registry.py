"""The judges registry: every judge module's loader is registered and resolves; a value picks the right entry
('auto' by data source, a registered name, a file by suffix); a new judge is one entry; the validation judge is
another draw (seed eval.seed + 1) of a judge trained here and the same file for a file judge."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

import fairdiff.evaluation.judges as judges
from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges.base import from_callable
from fairdiff.evaluation.judges.registry import JUDGES, JudgeEntry, judge_entry

JUDGE_DIR = Path(judges.__file__).parent


def test_every_judge_module_with_a_loader_is_registered_and_resolves():
    registered = {e.loader.split(":")[0].rsplit(".", 1)[1] for e in JUDGES.values()}
    with_loader = set()
    for path in JUDGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "load" for n in tree.body):
            with_loader.add(path.stem)
    assert with_loader == registered
    for e in JUDGES.values():
        module, fn = e.loader.split(":")
        assert callable(getattr(__import__(module, fromlist=[fn]), fn))
    assert sum(e.default for e in JUDGES.values()) == 1


@pytest.mark.parametrize("spec,source,name", [
    (None, "mnist", "domain"), ("auto", "digits", "domain"), ("auto", "faces-mini", "faces-mini"),
    ("domain", "faces-mini", "domain"), ("j.onnx", "mnist", "onnx"), ("dir/j.pt", None, "torchscript"),
    ("j.ts", "mnist", "torchscript")])
def test_a_value_picks_its_entry(spec, source, name):
    assert judge_entry(spec, SimpleNamespace(source=source)).name == name


def test_unknown_values_are_one_line_listing_what_is_known():
    for bad in ("j.txt", "nosuch", "onnx"):  # a file judge's name alone is not a judge: it needs its file
        with pytest.raises(FairdiffError, match="unknown classifier.*domain.*\\.onnx"):
            judge_entry(bad, SimpleNamespace(source="mnist"))


def test_a_new_judge_is_one_entry(monkeypatch):
    calls = []

    def load(spec, data_cfg, eval_cfg=None, *, seed_offset=0, progress=False):
        calls.append((spec, seed_offset))
        return from_callable(lambda im: im.reshape(len(im), -1)[:, :2].astype(float), "bright", 2)

    mod = types.ModuleType("fairdiff_test_judge")
    mod.load = load
    monkeypatch.setitem(sys.modules, "fairdiff_test_judge", mod)
    monkeypatch.setitem(JUDGES, "bright", JudgeEntry("bright", "test judge", "fairdiff_test_judge:load",
                                                     suffixes=(".bright",)))
    data = SimpleNamespace(source="mnist")
    assert judges.load_classifier("x.bright", data).name == "bright"
    assert judges.load_validation_judge("x.bright", data).name == "bright"
    assert calls == [("x.bright", 0), ("x.bright", judges.VALIDATION_SEED_OFFSET)]


def test_validation_judge_is_another_draw_of_the_domain_cnn(monkeypatch):
    import fairdiff.evaluation.judges.domain as domain

    seen = []
    monkeypatch.setattr(domain, "domain_classifier",
                        lambda data_cfg, eval_cfg=None, *, clf_cfg=None, progress=False: seen.append(clf_cfg))
    ev = SimpleNamespace(seed=7, classifier_steps=123)
    data = SimpleNamespace(source="mnist")
    judges.load_classifier("auto", data, ev)
    judges.load_validation_judge("auto", data, ev)
    assert seen[0] is None  # the test judge: the domain CNN's own settings (seed eval.seed)
    assert seen[1].seed == 8 and seen[1].steps == 123
