"""Per-method config sections (fairdiff/method_options.py): flat ``method.*`` keys as before, each method's own
options checked, a key no method has rejected with one line naming the method's options, and the resolved config
keeping its shape (run folders written before still load and resume)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fairdiff.config import MethodConfig, RunConfig, dump_config, load_config
from fairdiff.errors import ConfigError
from fairdiff.method_options import DDMOptions, TIWOptions, option_names
from fairdiff.utils.typed_config import from_dict, set_dotted

# the method section as run folders hold it (config.yaml), key order included
FLAT_KEYS = [
    "name", "alpha", "reconstruction_weight", "indicator_widths", "indicator_input", "indicator_ce",
    "indicator_grad", "indicator_t_min", "indicator_t_max", "labels", "num_clusters", "cluster_features", "clustering",
    "target", "balance",
    "align_steps", "align_classifier", "align_classifier_steps", "preserve_weight", "preserve_prompt_weight",
    "uncertainty_threshold",
    "ot_draws", "disc_width", "disc_steps", "disc_batch_size", "disc_lr", "disc_weight_decay", "disc_holdout",
    "weight_clip", "iw_timestep",
]


def test_method_section_keeps_its_flat_shape():
    assert [f.name for f in dataclasses.fields(MethodConfig)] == FLAT_KEYS
    assert list(yaml.safe_load(dump_config(RunConfig()))["method"]) == FLAT_KEYS
    m = MethodConfig()
    assert (m.name, m.alpha, m.disc_steps, m.indicator_widths, m.weight_clip) == ("baseline", 0.05, 500, [1024, 512],
                                                                               20.0)
    assert m.indicator_widths is not MethodConfig().indicator_widths  # list defaults are not shared


@pytest.mark.parametrize("extra", [["method.name=ddm", "method.alpha=0.2", "method.indicator_ce=balanced"],
                                   ["method.name=tiw", "method.disc_steps=150", "method.alpha=0.3"],
                                   ["method.name=reweight", "method.target=[0.25,0.75]"]])
def test_written_config_loads_back_unchanged(tmp_path, extra):
    cfg = load_config(None, extra)
    p = tmp_path / "config.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg and dump_config(again) == dump_config(cfg)


def test_each_method_has_its_own_section():
    cfg = load_config(None, ["method.name=ddm", "method.alpha=0.2", "method.disc_steps=9"])
    sec = cfg.method.section()
    assert isinstance(sec, DDMOptions) and sec.alpha == 0.2 and not hasattr(sec, "disc_steps")
    assert option_names("baseline") == [] and "disc_steps" in option_names("iw") and "alpha" not in option_names("tiw")
    assert isinstance(load_config(None, ["method.name=iw"]).method.section(), TIWOptions)


@pytest.mark.parametrize("overrides, needles", [
    (["method.name=ddm", "method.nosuch=1"],
     ["'method.nosuch'", "method ddm has the options alpha,", "cluster_features"]),
    (["method.name=tiw", "method.alpha_=1"], ["'method.alpha_'", "method tiw has the options disc_width,"]),
    (["method.nosuch=1"], ["'method.nosuch'", "method baseline has no options"]),
])
def test_a_key_no_method_has_is_one_line_naming_the_method(overrides, needles):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_unknown_method_key_in_a_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  name: reweight\n  target: [0.5, 0.5]\n  disc_step: 5\n")
    with pytest.raises(ConfigError, match=r"'method.disc_step'.*method reweight has the options labels, "
                                          r"num_clusters, cluster_features, clustering, target"):
        load_config(p)


def test_options_of_another_method_are_accepted_and_have_no_effect():
    # what bench files rely on: method.disc_steps set for every cell, baseline included
    cfg = load_config(None, ["method.name=baseline", "method.disc_steps=150", "method.alpha=0.3"])
    assert cfg.method.disc_steps == 150 and cfg.method.alpha == 0.3  # kept in the resolved config (its shape)
    assert dataclasses.asdict(cfg.method.section()) == {}  # but the baseline reads none of them


@pytest.mark.parametrize("override, key", [
    ("method.disc_lr=0", "method.disc_lr"), ("method.weight_clip=0.5", "method.weight_clip"),
    ("method.disc_holdout=1", "method.disc_holdout"), ("method.disc_steps=0", "method.disc_steps"),
    ("method.alpha=2", "method.alpha"), ("method.num_clusters=1", "method.num_clusters"),
])
def test_every_section_is_range_checked_whatever_the_method(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["method.name=baseline", override])


def test_conditions_of_a_method_apply_only_when_it_is_chosen():
    # align's chain must fit the schedule; with another method align_steps has no effect
    ok = load_config(None, ["model.num_train_timesteps=8", "sample.steps=5"])
    assert ok.method.align_steps == 10
    with pytest.raises(ConfigError, match=r"method\.align_steps: must be at most model\.num_train_timesteps \(8\)"):
        load_config(None, ["model.num_train_timesteps=8", "sample.steps=5", "method.name=align",
                           "model.pretrained=x"])
    with pytest.raises(ConfigError, match="indicator_t"):
        load_config(None, ["method.name=ddm", "method.indicator_t_min=500", "method.indicator_t_max=100"])
    load_config(None, ["method.indicator_t_min=500", "method.indicator_t_max=100"])  # baseline: no effect


def test_typed_config_helpers():
    @dataclasses.dataclass
    class Sec:
        a: int = 1

        @classmethod
        def unknown_key_message(cls, key, data):
            return f"no {key} here"

    with pytest.raises(ConfigError, match="^no x.b here$"):
        from_dict(Sec, {"b": 2}, prefix="x")
    assert from_dict(Sec, {"a": 2.0}).a == 2
    data = {"s": {"a": 1}}
    set_dotted(data, ["s", "a"], 5)
    assert data == {"s": {"a": 5}}
    with pytest.raises(ConfigError, match="unknown config key 's.b'"):
        set_dotted(data, ["s", "b"], 1)
    with pytest.raises(ConfigError, match="^custom t$"):
        set_dotted(data, ["t", "x"], 1, unknown=lambda k: f"custom {k}")


def test_reading_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fairdiff.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
