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


# values that were accepted (or ended in a traceback) before the range checks; each is now one ConfigError line
BAD_VALUES = [
    ("train.lr=.nan", "train.lr"), ("train.lr=inf", "train.lr"),
    ("train.ema_decay=5", "train.ema_decay"), ("train.ema_decay=1", "train.ema_decay"),
    ("train.ema_decay=-0.1", "train.ema_decay"), ("train.warmup_steps=-10", "train.warmup_steps"),
    ("train.log_every=0", "train.log_every"), ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.checkpoint_total_limit=0", "train.checkpoint_total_limit"), ("train.sample_every=-1", "train.sample_every"),
    ("train.adam_beta1=1.5", "train.adam_beta1"), ("train.adam_beta2=-0.5", "train.adam_beta2"),
    ("train.max_grad_norm=0", "train.max_grad_norm"), ("train.weight_decay=-1", "train.weight_decay"),
    ("train.max_grad_norm=.nan", "train.max_grad_norm"),
    ("model.num_train_timesteps=0", "model.num_train_timesteps"), ("model.num_train_timesteps=20", "sample.steps"),
    ("model.vae_kl_weight=.nan", "model.vae_kl_weight"), ("model.lora_alpha=.inf", "model.lora_alpha"),
    ("data.heldout_per_group=-3", "data.heldout_per_group"), ("data.shares=[.nan,.nan]", "data.shares"),
    ("data.size=0", "data.size"), ("data.synthetic_size=0", "data.synthetic_size"),
    ("data.channels=0", "data.channels"), ("data.synthetic_classes=1", "data.synthetic_classes"),
    ("method.target=[.nan,.nan]", "method.target"), ("method.reconstruction_weight=-1", "method.reconstruction_weight"),
    ("method.num_clusters=1", "method.num_clusters"), ("method.indicator_widths=[0]", "method.indicator_widths"),
    ("method.align_classifier_steps=0", "method.align_classifier_steps"),
    ("sample.eta=-3", "sample.eta"), ("sample.eta=.nan", "sample.eta"),
    ("eval.target=[.nan,.nan]", "eval.target"), ("eval.confidence=1.5", "eval.confidence"),
    ("eval.confidence=0", "eval.confidence"), ("eval.bootstrap=-1", "eval.bootstrap"),
    ("eval.n_samples=0", "eval.n_samples"), ("eval.pr_k=0", "eval.pr_k"), ("eval.batch_size=0", "eval.batch_size"),
    ("eval.classifier_steps=0", "eval.classifier_steps"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg
    assert any(w in msg for w in ("at least", "at most", "finite", "lie in", "positive", "sum to 1")), msg


@pytest.mark.parametrize("override", ["train.ema_decay=0", "train.ema_decay=0.9999", "train.warmup_steps=0",
                                      "data.heldout_per_group=0", "sample.eta=1.0", "train.sample_every=0",
                                      "train.checkpoint_every=0", "model.num_train_timesteps=50"])
def test_edge_values_are_accepted(override):
    load_config(None, [override])


def test_bad_values_in_a_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match="train.lr: must be a finite number"):
        load_config(p)


@pytest.mark.parametrize("content, needle", [
    (b"train:\n  lr: 1e-3\n\xff\xfe bad bytes\n", "not UTF-8"),
    (b"train: [unclosed\n", "not valid YAML"),
    (b"- a\n- list\n", "mapping"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
])
def test_config_file_that_is_not_utf8_yaml(tmp_path, content, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)
