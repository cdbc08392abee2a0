"""The method registry (methods/registry.py): every method is registered, each entry's flags match what the
method does, and no code outside methods/ compares method names."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from fairdiff.config import load_config
from fairdiff.errors import ConfigError
from fairdiff.method_options import SECTIONS
from fairdiff.methods import DataInfo, build_objective
from fairdiff.methods.registry import REGISTRY, describe, get_method, method_names, uses_clusters

SRC = Path(__file__).resolve().parents[2] / "src" / "fairdiff"
TRAINING = method_names("training")


# ------------------------------------------------------------------------------------------- registered
def test_every_method_name_is_registered_and_vice_versa():
    # the values method.name accepts (the config's Literal) are exactly the registered training methods
    from typing import get_args

    from fairdiff.config import MethodConfig

    accepted = set(get_args(MethodConfig.__dataclass_fields__["name"].type))
    assert accepted == set(TRAINING) == set(SECTIONS)
    assert all(get_method(n).options is SECTIONS[n] for n in TRAINING)  # one section per method, the config's
    assert method_names("sampling") == ["guidance"]
    assert sorted(method_names()) == sorted([*TRAINING, "guidance"])
    for name in TRAINING:  # each builds its own objective class, whose name is the method's
        obj = build_objective(load_config(None, [f"method.name={name}", "model.pretrained=x"]
                                          if get_method(name).needs_pretrained else [f"method.name={name}"]).method)
        assert obj.name == name and type(obj).__name__ == get_method(name).objective.split(":")[1]
    with pytest.raises(ConfigError, match="unknown method 'nosuch'.*baseline"):
        get_method("nosuch")


def test_every_objective_class_in_methods_is_registered():
    """A method file that defines an Objective subclass without a registry entry is caught here."""
    registered = {e.objective for e in REGISTRY.values() if e.objective}
    found = set()
    for path in sorted((SRC / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Objective") and node.name != "Objective":
                found.add(f"fairdiff.methods.{path.stem}:{node.name}")
    assert found == registered


def test_sampling_time_hooks_are_what_production_calls(monkeypatch, tmp_path):
    """The registry's guidance hooks are the objects production uses, and production asks the registry for them:
    guided sampling (``fairdiff sample RUN --heads``, bench guidance cells) loads its heads and builds its guidance
    through ``hook('load')`` / ``hook('guide')``; a bench guidance cell fits heads through ``hook('fit')``."""
    import dataclasses

    import fairdiff.methods.registry as registry
    import fairdiff.sampling.guided as guided
    from fairdiff.methods.guidance import DistributionGuidance
    from fairdiff.models.heads import load_heads
    from fairdiff.training.heads import train_heads

    g = get_method("guidance")
    assert g.sampling_time and g.objective is None
    assert set(g.sampling_hooks) == {"fit", "load", "guide"}
    assert g.hook("fit") is train_heads
    assert g.hook("load") is load_heads
    assert g.hook("guide") is DistributionGuidance
    # a registry whose 'load' hook is replaced is what guide_run calls: production asks the registry
    called = []

    def fake_load(path, device):
        called.append(str(path))
        raise RuntimeError("stop here")

    mod = type(registry)("fairdiff_test_hooks")
    mod.load = fake_load
    monkeypatch.setitem(__import__("sys").modules, "fairdiff_test_hooks", mod)
    patched = dataclasses.replace(g, sampling_hooks={**g.sampling_hooks, "load": "fairdiff_test_hooks:load"})
    monkeypatch.setitem(registry.REGISTRY, "guidance", patched)
    (tmp_path / "run" / "model" / "unet").mkdir(parents=True)  # enough of a run for the checks before the heads
    with pytest.raises(RuntimeError, match="stop here"):
        guided.guide_run(tmp_path / "run", tmp_path / "heads", 2, scale=1.0, steps=3, out_dir=tmp_path / "out",
                         device="cpu")
    assert called == [str(tmp_path / "heads")]
    with pytest.raises(KeyError):
        g.hook("nosuch")
    with pytest.raises(ConfigError, match="sampling time"):
        g.build(load_config().method)


# ------------------------------------------------------------------------------------------- flags
def _cfg(name: str, *extra: str):
    pre = ["model.pretrained=x"] if get_method(name).needs_pretrained else []
    return load_config(None, [f"method.name={name}", "method.indicator_widths=[8]", *pre, *extra])


def _batch(with_group: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    b = {"pixel_values": torch.randn(4, 1, 8, 8, generator=g)}
    if with_group:
        b["group"] = torch.tensor([0, 1, 0, 1])
    return b


@pytest.mark.parametrize("name", [n for n in TRAINING if n != "align"])
def test_uses_groups_matches_the_loss(name):
    """A method flagged uses_groups cannot compute its loss without per-image groups; the others ignore them."""
    from diffusers import DDPMScheduler

    from fairdiff.models.unet import build_unet

    unet, sched = build_unet("tiny", 8, 1), DDPMScheduler(num_train_timesteps=100)
    obj = build_objective(_cfg(name).method)
    obj.setup(DataInfo(2, [3, 1], (1, 8, 8)))
    with_groups = obj.loss(unet, _batch(True), sched, torch.Generator().manual_seed(1)).total
    if get_method(name).uses_groups:
        with pytest.raises(KeyError, match="group"):
            obj.loss(unet, _batch(False), sched, torch.Generator().manual_seed(1))
    else:  # same loss, to the bit, with no groups in the batch
        without = obj.loss(unet, _batch(False), sched, torch.Generator().manual_seed(1)).total
        assert torch.equal(with_groups, without)


def test_align_uses_groups_for_its_classifier():
    from fairdiff.models.unet import build_unet

    assert get_method("align").uses_groups
    obj = build_objective(_cfg("align", "method.align_classifier_steps=1").method)
    obj.setup(DataInfo(2, [4, 0], (1, 8, 8)))
    with pytest.raises(ConfigError, match="every group needs training images"):
        obj.prepare(build_unet("tiny", 8, 1), torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", TRAINING)
def test_uses_reference_and_modules_match_the_objective(name):
    entry = get_method(name)
    obj = build_objective(_cfg(name).method)
    obj.setup(DataInfo(2, [3, 1], (1, 8, 8)))
    assert getattr(obj, "uses_reference", False) == entry.uses_reference  # what the trainer fits before training
    assert tuple(obj.modules()) == entry.modules
    assert set(obj.module_configs) <= set(entry.modules)


@pytest.mark.parametrize("name", TRAINING)
def test_needs_pretrained_matches_validation(name):
    entry = get_method(name)
    if entry.needs_pretrained:
        with pytest.raises(ConfigError, match="model.pretrained"):
            load_config(None, [f"method.name={name}"])
        assert entry.default_after == "baseline"
    else:
        assert load_config(None, [f"method.name={name}"]).method.name == name and entry.default_after is None


def test_uses_clusters_only_for_methods_with_groups():
    assert uses_clusters(_cfg("ddm", "method.labels=clusters").method)
    assert uses_clusters(_cfg("reweight", "method.labels=clusters").method)
    assert not uses_clusters(_cfg("ddm").method)
    # options of other methods have no effect: baseline and tiw take no groups, so no clusters are made
    assert not uses_clusters(_cfg("baseline", "method.labels=clusters").method)
    assert not uses_clusters(_cfg("tiw", "method.labels=clusters").method)


def test_report_line():
    assert describe(_cfg("ddm", "method.alpha=0.2").method) == "ddm (alpha 0.2)"
    assert describe(_cfg("ddm").method, bold=True) == "**ddm** (alpha 0.05)"
    assert describe(_cfg("reweight", "method.alpha=0.2").method, bold=True) == "**reweight**"


def test_each_method_is_built_from_its_own_section_only():
    """An option of another method has no effect on the objective (the rule for bench-wide overrides)."""
    plain = build_objective(_cfg("tiw").method)
    mixed = build_objective(_cfg("tiw", "method.alpha=0.5", "method.target=[0.5,0.5]", "method.align_steps=3").method)
    assert vars(plain) == vars(mixed)
    ddm = get_method("ddm").section(_cfg("ddm", "method.disc_steps=7").method)
    assert not hasattr(ddm, "disc_steps") and dataclasses.asdict(ddm)["alpha"] == 0.05


# ------------------------------------------------------------------------------------------- no name checks
# Comparisons with a method name's string that are not about methods (reviewed; each says what it compares).
ALLOWED = {
    ("bench/config.py", 'k == "guidance"'),  # the bench method-entry key `guidance:` (METHOD_KEYS)
    ("sampling/files.py", 'k != "guidance"'),  # the samples' recipe key `guidance` (RECIPE_KEYS)
}


def _name_comparisons(path: Path, names: set[str]) -> list[str]:
    """Source of every comparison with a method name's string (==, !=, is, in a literal tuple / list / set), every
    ``case "name":`` and every dict literal keyed by two or more method names (a table of methods)."""
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in names:
            hits.append(f"case {node.value.value!r}")
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if len(set(keys) & names) >= 2:
                hits.append(ast.get_source_segment(path.read_text(), node))
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, right, left in zip(node.ops, operands[1:], operands[:-1]):
            strings = []
            if isinstance(op, (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):
                strings = [x.value for x in (left, right) if isinstance(x, ast.Constant)]
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                strings = [x.value for x in right.elts if isinstance(x, ast.Constant)]
            if any(isinstance(s, str) and s in names for s in strings):
                hits.append(ast.get_source_segment(path.read_text(), node))
    return hits


def test_no_method_name_is_compared_outside_methods():
    names = set(method_names())
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("methods/") or rel == "method_options.py":  # where methods describe themselves
            continue
        bad += [f"{rel}: {seg}" for seg in _name_comparisons(path, names) if (rel, seg) not in ALLOWED]
    assert not bad, "ask fairdiff.methods.registry instead of comparing method names:\n" + "\n".join(bad)


def test_the_name_check_catches_each_form(tmp_path):
    p = tmp_path / "x.py"
    p.write_text('a = m.name == "ddm"\nb = "align" != m.name\nc = m.name in ("tiw", "iw")\n'
                 'd = n not in ["x", "reweight"]\ne = m.name == "other"\nf = m.name in (x, y)\n'
                 'g = {"align": 1, "guidance": 2}\nh = {"guidance": 1}\nmatch m.name:\n    case "tiw":\n        pass\n')
    assert _name_comparisons(p, set(method_names())) == [
        'm.name == "ddm"', '"align" != m.name', 'm.name in ("tiw", "iw")', 'n not in ["x", "reweight"]',
        '{"align": 1, "guidance": 2}', "case 'tiw'"]
