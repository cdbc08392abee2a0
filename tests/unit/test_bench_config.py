"""Bench configs: parsing, one-line rejection of mistakes, cell expansion and ordering, selection, tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from fairdiff.bench.config import (
    BenchConfigError,
    check_cells,
    expand_cells,
    load_bench_config,
    override_strings,
    parse_bench_config,
    select_cells,
)
from fairdiff.bench.matrix import markdown_tables, summarise
from fairdiff.config import load_config
from fairdiff.errors import ConfigError, FairdiffError

REPO = Path(__file__).resolve().parents[2]

BASIC = {
    "name": "t",
    "seeds": [0, 1],
    "settings": {"a": {"data.shares": [0.8, 0.2]}, "b": {"data.shares": [0.2, 0.8]}},
    "methods": {
        # declared before the method it depends on: expansion must still put baseline first
        "align": {"method.name": "align", "after": "baseline", "overrides": {"train.steps": 3, "model.lora": True}},
        "guidance": {"guidance": {"scale": 10}, "after": "baseline", "sample.steps": 7},
        "baseline": {"method.name": "baseline"},
        "ddm": {"method.name": "ddm", "method.alpha": 0.05},
    },
}


def _write(tmp_path: Path, data: dict, name: str = "bench.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_parse_mapping_form():
    cfg = parse_bench_config(BASIC)
    assert cfg.name == "t" and cfg.seeds == [0, 1] and list(cfg.settings) == ["a", "b"]
    assert cfg.methods["align"].after == "baseline"
    assert cfg.methods["align"].overrides == {"method.name": "align", "train.steps": 3, "model.lora": True}
    g = cfg.methods["guidance"]
    assert g.guidance is not None and g.guidance.scale == 10.0 and g.guidance.temperature is None
    assert g.overrides == {"sample.steps": 7}
    assert cfg.methods["ddm"].guidance is None and cfg.methods["ddm"].after is None


def test_a_mapping_entry_named_after_a_method_trains_that_method():
    """`reweight: {}` (or with other overrides) trains reweight, not silently the base config's method; a label
    that is no method, or an explicit method.name, is left as written."""
    cfg = parse_bench_config({"settings": {"s": {}}, "methods": {
        "reweight": {}, "ddm": {"method.alpha": 0.1}, "mine": {"method.name": "ddm"}, "other": {"train.lr": 1e-4},
        "align": {"method.name": "reweight"}}})
    assert cfg.methods["reweight"].overrides == {"method.name": "reweight"}
    assert cfg.methods["ddm"].overrides == {"method.alpha": 0.1, "method.name": "ddm"}
    assert cfg.methods["mine"].overrides == {"method.name": "ddm"}
    assert cfg.methods["other"].overrides == {"train.lr": 1e-4}
    assert cfg.methods["align"].overrides == {"method.name": "reweight"}


def test_parse_list_form():
    cfg = parse_bench_config({"settings": {"s": {}}, "methods": ["baseline", "ddm", "guidance", "align"]})
    assert cfg.methods["ddm"].overrides == {"method.name": "ddm"}
    assert cfg.methods["guidance"].guidance is not None and cfg.methods["guidance"].after == "baseline"
    assert cfg.methods["align"].after == "baseline" and cfg.seeds == [0] and cfg.name == "bench"


def test_base_is_relative_to_the_bench_file(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 17\n")
    (tmp_path / "bench").mkdir()
    p = _write(tmp_path / "bench", {**BASIC, "base": "../run.yaml"})
    cfg = load_bench_config(p)
    assert cfg.base.resolve() == (tmp_path / "run.yaml").resolve()
    cells = expand_cells(cfg, tmp_path / "out")
    assert load_config(cfg.base, cells[0].overrides).train.steps == 17


@pytest.mark.parametrize("change, needle", [
    ({"bogus": 1}, "unknown bench config key 'bogus'"),
    ({"methods": {"baseline": {"method.name": "baseline", "aftr": "x"}}}, "methods.baseline.aftr"),
    ({"methods": {"baseline": {}, "align": {"method.name": "align", "after": "nosuch"}}},
     "no method named 'nosuch'"),
    ({"methods": {"g": {"guidance": True}}}, "guidance needs 'after"),
    ({"methods": {"b": {}, "g": {"guidance": True, "after": "b", "train.steps": 3}}}, "only sample.* and eval.*"),
    ({"methods": {"b": {}, "g": {"guidance": {"scal": 3}, "after": "b"}}}, "methods.g.guidance.scal"),
    ({"methods": {"b": {}, "g": {"guidance": True, "after": "b"}, "c": {"after": "g"}}}, "trains no model"),
    ({"methods": {"x": {"after": "y"}, "y": {"after": "x"}}}, "cycle"),
    ({"methods": {"x": {"after": "x"}}}, "after itself"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"settings": {}}, "settings"),
    ({"settings": {"a/b": {}}}, "settings"),
    ({"methods": []}, "methods"),
    ({"base": "missing.yaml"}, "base: run config not found"),
])
def test_mistakes_are_one_line_errors(change, needle, tmp_path):
    with pytest.raises(FairdiffError) as e:
        load_bench_config(_write(tmp_path, {**BASIC, **change}))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert isinstance(e.value, ConfigError)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(BenchConfigError, match="not found"):
        load_bench_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("settings: [a\n")
    with pytest.raises(BenchConfigError, match="not valid YAML"):
        load_bench_config(tmp_path / "bad.yaml")


def test_cells_order_overrides_and_after(tmp_path):
    cfg = parse_bench_config(BASIC)
    out = tmp_path / "out"
    cells = expand_cells(cfg, out)
    names = [c.name for c in cells]
    assert len(cells) == 2 * 4 * 2
    # per setting: methods with `after` come after their dependency (baseline), seeds inner
    assert names[:8] == ["a/baseline-s0", "a/baseline-s1", "a/align-s0", "a/align-s1", "a/guidance-s0",
                         "a/guidance-s1", "a/ddm-s0", "a/ddm-s1"]
    for c in cells:
        if c.after:
            assert names.index(c.after) < names.index(c.name) and c.after.startswith(c.setting + "/")
    align = {c.name: c for c in cells}["b/align-s1"]
    assert align.after == "b/baseline-s1" and f"model.pretrained={out / 'cells' / 'b/baseline-s1'}" in align.overrides
    rc = load_config(None, align.overrides)
    assert (rc.method.name, rc.train.seed, rc.train.steps, rc.data.shares) == ("align", 1, 3, [0.2, 0.8])
    assert rc.model.pretrained == str(out / "cells" / "b" / "baseline-s1")
    guid = {c.name: c for c in cells}["a/guidance-s0"]
    gc = load_config(None, guid.overrides)  # the model's config (baseline) plus the guidance cell's sample steps
    assert guid.guidance.scale == 10 and gc.method.name == "baseline" and gc.sample.steps == 7
    assert gc.model.pretrained is None and gc.data.shares == [0.8, 0.2]
    check_cells(cfg, cells)  # every cell resolves


def test_seeds_override_and_selection(tmp_path):
    cfg = parse_bench_config(BASIC)
    cells = expand_cells(cfg, tmp_path, seeds=[5])
    assert {c.seed for c in cells} == {5} and len(cells) == 8
    picked = [c.name for c in select_cells(cells, "b/align-*")]
    assert picked == ["b/baseline-s5", "b/align-s5"]  # the dependency comes along
    assert [c.name for c in select_cells(cells, "ddm")] == ["a/ddm-s5", "b/ddm-s5"]
    assert len(select_cells(cells, "a")) == 4 and len(select_cells(cells, None)) == 8
    with pytest.raises(BenchConfigError, match="matches no cell"):
        select_cells(cells, "zzz*")


def test_bad_run_override_names_the_cell(tmp_path):
    cfg = parse_bench_config({**BASIC, "overrides": {"train.lrr": 1}})
    with pytest.raises(BenchConfigError, match=r"cell a/baseline-s0: unknown config key 'train.lrr'"):
        check_cells(cfg, expand_cells(cfg, tmp_path))


def test_override_strings_round_trip():
    ov = {"data.shares": [0.8, 0.2], "method.name": "ddm", "train.lr": 1e-4, "train.ema": False,
          "eval.target": None, "name": "yes"}
    cfg = load_config(None, override_strings(ov))
    assert cfg.data.shares == [0.8, 0.2] and cfg.method.name == "ddm" and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.ema is False and cfg.eval.target is None and cfg.name == "yes"


def test_the_text_to_image_bench_config_resolves(tmp_path):
    cfg = load_bench_config(REPO / "configs" / "bench" / "t2i-tiny.yaml")
    cells = expand_cells(cfg, tmp_path)
    check_cells(cfg, cells)
    runs = {c.method: load_config(cfg.base, c.overrides) for c in cells}
    assert set(runs) == {"baseline", "reweight", "ddm"}
    assert all(r.text.sd == "runs/tiny-sd" and r.method.name == m for m, r in runs.items())
    assert runs["ddm"].method.alpha == 0.05


@pytest.mark.parametrize("name, n_cells", [("mnist-pairs", 60), ("faces-mini", 30)])
def test_shipped_configs_resolve(name, n_cells, tmp_path):
    cfg = load_bench_config(REPO / "configs" / "bench" / f"{name}.yaml")
    cells = expand_cells(cfg, tmp_path)
    check_cells(cfg, cells)
    assert len(cells) == n_cells and list(cfg.methods) == ["baseline", "ddm", "reweight", "align", "guidance"]
    align = next(c for c in cells if c.method == "align")
    rc = load_config(cfg.base, align.overrides)
    assert rc.model.lora and rc.train.steps == 150 and rc.method.align_steps == 10 and rc.train.ema is False
    assert rc.model.pretrained.endswith("baseline-s0")
    if name == "faces-mini":
        assert (rc.data.source, rc.data.resolution, rc.data.channels, rc.eval.n_samples) == ("faces-mini", 32, 3, 1000)
        assert {tuple(s["data.shares"]) for s in cfg.settings.values()} == {(0.8, 0.2), (0.2, 0.8)}
    else:
        assert rc.data.source == "mnist" and len(cfg.settings) == 4


def _rows():
    rows = []
    for setting, base in (("s1", 0.1), ("s2", 0.3)):
        for method, shift in (("baseline", 0.0), ("ddm", 0.2)):
            for seed in (0, 1):
                v = base + shift + 0.1 * seed
                rows.append({"cell": f"{setting}/{method}-s{seed}", "setting": setting, "method": method,
                             "seed": seed, "fd_strict": v, "fd_strict_lo": v - 0.05, "fd_strict_hi": v + 0.05,
                             "valid_rate": 0.9, "fd_hard": v - 0.1, "fd_hard_lo": v - 0.15, "fd_hard_hi": v - 0.05,
                             "fd_soft": v, "kl": 0.0, "spd": 0.0, "domain_fid": 10.0, "precision": 0.9,
                             "recall": 0.8, "share_0": 0.6, "share_1": 0.4, "conditional_spd": math.nan,
                             "n": 100, "train_s": 5.0, "groups": "0/1", "target_0": 0.5, "train_share_0": 0.8})
    return rows


def test_summarise_by_setting_and_method():
    s = summarise(_rows(), by=("setting", "method"))
    assert [(a["setting"], a["method"]) for a in s] == [("s1", "baseline"), ("s1", "ddm"), ("s2", "baseline"),
                                                        ("s2", "ddm")]
    assert s[1]["fd_hard"] == pytest.approx(0.25) and s[1]["fd_hard_std"] == pytest.approx(0.0707106781)
    assert s[0]["share_1"] == pytest.approx(0.4) and s[0]["train_s"] == pytest.approx(5.0)


def test_markdown_one_table_per_setting():
    md = markdown_tables(_rows(), "T", per="setting")
    assert md.count("### s") == 2 and md.index("### s1") < md.index("### s2")
    s2 = md[md.index("### s2"):]
    assert "| ddm | 2 | 0.550 ± 0.071 |" in s2 and "| baseline | 2 | 0.350 ± 0.071 |" in s2
    assert "share g1" in md and "train s" in md and "| s2/ddm-s1 | 0.600 [0.550, 0.650] | 0.900" in s2
    assert "| 0.500 [0.450, 0.550] |" in s2  # the forced-choice FD with its CI beside the strict one
    assert "training share of g0 0.80, target 0.50" in md


def test_a_cell_run_with_another_config_is_stale_never_reused(tmp_path):
    """A finished cell records the hash of its resolved config; a changed config is named, not reused."""
    from fairdiff.bench.matrix import stale_reason, write_cell_record
    from fairdiff.config import load_config, save_config

    a = load_config(None, ["train.steps=10"])
    b = load_config(None, ["train.steps=30"])
    cell = tmp_path / "cell"
    assert stale_reason(cell, a) is None  # nothing there yet
    cell.mkdir()
    (cell / "metrics.json").write_text("{}")
    assert "no record" in stale_reason(cell, a)
    write_cell_record(cell, a)
    assert stale_reason(cell, a) is None
    assert stale_reason(cell, b) == "train.steps 10 -> 30"
    assert "guidance.scale" in stale_reason(cell, a, {"scale": 2.0})
    # a cell from before records existed is judged by the config.yaml its training wrote
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_config(a, legacy / "config.yaml")
    assert stale_reason(legacy, a) is None and stale_reason(legacy, b) == "train.steps 10 -> 30"


def test_an_option_added_after_a_cell_ran_keeps_it_fresh_at_its_default(tmp_path):
    """A cell recorded before fairdiff grew an option (here: method.preserve_prompt_weight) is still the same cell
    while the bench leaves that option at its default; set to anything else, the cell is stale."""
    from fairdiff.bench.matrix import CELL_RECORD, stale_reason, write_cell_record
    from fairdiff.config import load_config
    from fairdiff.utils.io import read_json, write_json

    a = load_config(None, ["train.steps=10"])
    cell = tmp_path / "cell"
    cell.mkdir()
    write_cell_record(cell, a)
    rec = read_json(cell / CELL_RECORD)
    del rec["config"]["method"]["preserve_prompt_weight"]  # as an older fairdiff wrote it
    rec["config_hash"] = "older"
    write_json(cell / CELL_RECORD, rec)
    assert stale_reason(cell, a) is None
    changed = load_config(None, ["train.steps=10", "method.preserve_prompt_weight=3.0"])
    assert stale_reason(cell, changed) == "method.preserve_prompt_weight None -> 3.0"
    assert stale_reason(cell, load_config(None, ["train.steps=30"])) == "train.steps 10 -> 30"


def test_which_changed_cells_keep_their_model(tmp_path):
    """Only eval.* (and, for a cell that trains and has its model, sample.*) changes keep a finished cell's model;
    a guidance cell's heads depend on the sampler, so a sample.* change refuses it. Preparing moves, never deletes."""
    from fairdiff.bench.records import prepare_reevaluation, reevaluable, write_cell_record
    from fairdiff.config import load_config, save_config

    a = load_config(None, ["train.steps=10"])
    cell = tmp_path / "cell"
    cell.mkdir()
    write_cell_record(cell, a)
    more = load_config(None, ["train.steps=10", "eval.n_samples=5000"])
    sampler = load_config(None, ["train.steps=10", "sample.steps=7"])
    assert reevaluable(cell, more) == []  # no trained model in the folder
    (cell / "model").mkdir()
    save_config(a, cell / "config.yaml")
    (cell / "samples").mkdir()
    (cell / "samples" / "samples.npz").write_bytes(b"old")
    (cell / "metrics.json").write_text('{"n": 1000}')
    assert reevaluable(cell, more) == ["eval.n_samples"] and reevaluable(cell, sampler) == ["sample.steps"]
    assert reevaluable(cell, load_config(None, ["train.steps=11", "eval.n_samples=5000"])) == []
    assert reevaluable(cell, sampler, guided=True) == [] and reevaluable(cell, more, guided=True) == ["eval.n_samples"]
    dest = prepare_reevaluation(cell, more, ["eval.n_samples"])
    assert (dest / "metrics.json").read_text() == '{"n": 1000}' and (dest / "samples/samples.npz").exists()
    assert not (cell / "metrics.json").exists() and not (cell / "samples").exists()
    assert load_config(cell / "config.yaml").eval.n_samples == 5000 and reevaluable(cell, more) == []
    assert load_config(dest / "config.yaml").eval.n_samples == a.eval.n_samples
    # only the judging changed: the samples stay, the next results go to previous/1
    (cell / "metrics.json").write_text("{}")
    boot = load_config(None, ["train.steps=10", "eval.n_samples=5000", "eval.bootstrap=10"])
    (cell / "samples").mkdir()
    dest2 = prepare_reevaluation(cell, boot, reevaluable(cell, boot))
    assert dest2.name == "1" and (cell / "samples").exists() and (dest2 / "metrics.json").exists()
