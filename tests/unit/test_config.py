import pytest

from fairdiff.config import RunConfig, apply_overrides, dump_config, load_config
from fairdiff.errors import ConfigError


def test_overrides_apply_and_types():
    cfg = load_config(None, ["train.lr=2e-4", "data.shares=[0.7,0.3]", "train.steps=10", "method.name=ddm"])
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.data.shares == [0.7, 0.3]
    assert cfg.train.steps == 10 and isinstance(cfg.train.steps, int)
    assert cfg.method.name == "ddm"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lrr=1", "train.lrr"),
        ("nosuch.key=1", "nosuch"),
        ("train.lr=abc", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("data.shares=[0.5,0.6]", "data.shares"),
        ("data.shares=[1.0]", "data.shares"),
        ("model.preset=huge", "model.preset"),
        ("train.ema=maybe", "train.ema"),
        ("trainlr", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_unknown_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  bogus: 2\n")
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(p)


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, ["data.groups=[3,8]", "method.target=[0.75,0.25]"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg
    assert isinstance(again, RunConfig)


def test_apply_overrides_does_not_mutate():
    cfg = RunConfig()
    new = apply_overrides(cfg, ["train.steps=3"])
    assert cfg.train.steps == 1000 and new.train.steps == 3
