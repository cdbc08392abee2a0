"""``fairdiff debias --method filter`` end to end on a tiny synthetic run, with a judge whose answer is known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fairdiff.cli.main import main
from tests.conftest import corner_group


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "base"
    assert main(["train", *TINY, "train.steps=4", "train.checkpoint_every=0", "--out", str(out), "--quiet"]) == 0
    return out


def test_filter_keeps_the_target_shares_of_the_judge(base_run, corner_judge_file, tmp_path):
    out = tmp_path / "filtered"
    rc = main(["debias", str(base_run), "--target", "0.3,0.7", "--n", "20", "--judge", str(corner_judge_file),
               "--steps", "3", "--batch-size", "16", "--out", str(out), "--no-eval", "-q"])
    assert rc == 0
    z = np.load(out / "samples" / "samples.npz")
    assert z["images"].shape == (20, 1, 16, 16)
    groups = corner_group(z["images"])
    assert np.bincount(groups, minlength=2).tolist() == [6, 14]
    rec = json.loads((out / "debias.json").read_text())
    assert rec["kept"] == 20 and rec["target"] == [0.3, 0.7] and rec["drawn"] >= 20
    assert rec["drawn_per_kept"] == pytest.approx(rec["drawn"] / 20, abs=1e-3)
    # the kept images are exactly the base's own images for their seeds
    assert main(["sample", str(base_run), "--n", str(int(z["seeds"].max()) + 1), "--steps", "3",
                 "--out", str(tmp_path / "plain"), "--no-png", "-q"]) == 0
    plain = np.load(tmp_path / "plain" / "samples.npz")["images"]
    np.testing.assert_array_equal(plain[z["seeds"]], z["images"])
    # the folder is a run folder: config with the target and the base, and the base's manifest
    from fairdiff.config import load_config

    cfg = load_config(out / "config.yaml")
    assert cfg.eval.target == [0.3, 0.7] and cfg.eval.n_samples == 20
    assert cfg.model.pretrained == str(base_run.resolve())
    assert (out / "manifest.json").read_bytes() == (base_run / "manifest.json").read_bytes()


def test_filter_evaluates_with_the_test_judge(base_run, corner_judge_file, tmp_path):
    out = tmp_path / "ev"
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--n", "16", "--judge", str(corner_judge_file),
                 "--steps", "3", "--out", str(out), "-q"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 16 and m["target"] == [0.5, 0.5]
    assert m["classifier"]["name"] != "corner"  # scored by the run's test judge, not the one that filtered
    assert (out / "report.md").exists()


def test_debias_refuses_bad_input_and_keeps_files(base_run, corner_judge_file, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    common = ["--n", "4", "--judge", str(corner_judge_file), "--steps", "2", "--no-eval", "-q"]
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--out", str(user), *common]) == 2
    assert (user / "notes.txt").read_text() == "keep me" and len(list(user.iterdir())) == 1
    assert main(["debias", str(base_run), "--target", "0.2,0.3,0.5", "--out", str(tmp_path / "a"), *common]) == 2
    assert main(["debias", str(base_run), "--target", "0.5,0.6", "--out", str(tmp_path / "a"), *common]) == 2
    assert main(["debias", str(tmp_path / "nope"), "--target", "0.5,0.5", "--out", str(tmp_path / "a"), *common]) == 2
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--out", str(tmp_path / "a"), "--n", "0"]) == 2
    assert not (tmp_path / "a").exists()
    # a second debias into its own folder needs --overwrite, then replaces it
    out = tmp_path / "b"
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--out", str(out), *common]) == 0
    before = (out / "samples" / "samples.npz").read_bytes()
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--out", str(out), *common]) == 2
    assert (out / "samples" / "samples.npz").read_bytes() == before
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--out", str(out), "--overwrite", *common]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(len(line) < 400 for line in err.splitlines())


def test_distill_finetunes_the_base_on_its_filtered_images(base_run, corner_judge_file, tmp_path):
    out = tmp_path / "distilled"
    rc = main(["debias", str(base_run), "--method", "distill", "--target", "0.3,0.7", "--train-n", "10",
               "--train-steps", "2", "--judge", str(corner_judge_file), "--steps", "2", "--n", "8", "--no-eval",
               "--out", str(out), "-q"])
    assert rc == 0
    data = tmp_path / "distilled-data"
    pngs = sorted(data.glob("images/*.png"))
    assert len(pngs) == 10
    z = np.load(data / "samples" / "samples.npz")
    assert np.bincount(corner_group(z["images"]), minlength=2).tolist() == [3, 7]
    from fairdiff.config import load_config

    cfg = load_config(out / "config.yaml")
    assert cfg.data.train_on == "reference" and cfg.data.reference_dir == str((data / "images").resolve())
    assert cfg.model.pretrained == str(base_run.resolve()) and cfg.train.steps == 2 and cfg.eval.target == [0.3, 0.7]
    man = json.loads((out / "manifest.json").read_text())
    assert man["reference"]["count"] == 10 and man["reference"]["train_on"] == "reference"
    rec = json.loads((out / "debias.json").read_text())
    assert rec["method"] == "distill" and rec["filtered"]["kept"] == 10
    assert (out / "model" / "unet").is_dir()
    assert main(["debias", str(base_run), "--method", "filter", "--target", "0.5,0.5", "--train-n", "5",
                 "--out", str(tmp_path / "x")]) == 2


def test_distill_mix_real_trains_on_filtered_and_real_images_reweighted(base_run, corner_judge_file, tmp_path):
    """``--mix-real``: the filter's verdicts become the filtered images' groups (verdicts.csv, images/groups.csv),
    and the fine-tune reweights the real training images and the filtered ones together toward the target."""
    out = tmp_path / "mixed"
    rc = main(["debias", str(base_run), "--method", "distill", "--mix-real", "--target", "0.3,0.7", "--train-n", "10",
               "--train-steps", "2", "--judge", str(corner_judge_file), "--steps", "2", "--n", "8", "--no-eval",
               "--out", str(out), "-q"])
    assert rc == 0
    data = tmp_path / "mixed-data"
    z = np.load(data / "samples" / "samples.npz")
    verdicts = np.loadtxt(data / "verdicts.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert verdicts[:, 0].tolist() == z["seeds"].tolist()
    assert verdicts[:, 1].tolist() == corner_group(z["images"]).tolist()  # the corner judge's verdicts
    table = (data / "images" / "groups.csv").read_text().splitlines()
    assert table[0] == "file,group" and len(table) == 11
    from fairdiff.config import load_config

    cfg = load_config(out / "config.yaml")
    assert cfg.data.train_on == "both" and cfg.method.name == "reweight" and cfg.method.target == [0.3, 0.7]
    man = json.loads((out / "manifest.json").read_text())
    base_counts = json.loads((base_run / "manifest.json").read_text())["train_counts"]
    assert man["train_counts_biased"] == base_counts
    assert man["train_counts"] == [base_counts[0] + 3, base_counts[1] + 7]
    assert json.loads((out / "debias.json").read_text())["mix_real"] is True
    # a two-round run reuses a finished first round only when it was mixed the same way
    from fairdiff.debias.run import _finished_round

    recipe = {"train_n": 10, "train_steps": 2}
    assert _finished_round(out, base_run, [0.3, 0.7], {**recipe, "mix_real": True}, cfg.sample.seed) is not None
    assert _finished_round(out, base_run, [0.3, 0.7], recipe, cfg.sample.seed) is None
    assert _finished_round(out, base_run, [0.3, 0.7], {**recipe, "mix_real": True, "balance": "resample"},
                           cfg.sample.seed) is None  # drawn batches are another recipe
    common = ["--target", "0.5,0.5", "--judge", str(corner_judge_file), "--no-eval", "-q"]
    assert main(["debias", str(base_run), "--method", "filter", "--mix-real", *common,
                 "--out", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "f").exists()


def test_label_free_distill_mixes_real_images_by_their_clusters_in_two_rounds(base_run, tmp_path):
    """``distill --rounds 2 --mix-real --judge clusters``: no label anywhere. The filter records its cluster judge
    (clusters.npz); the real training images take their clusters under it (outside ones left out) and are trained on
    with the filtered images, reweighted toward the target; the first round's pilot is judged by those clusters."""
    from fairdiff.config import load_config
    from fairdiff.data import prepare_data
    from fairdiff.debias.clusters import load_cluster_judge
    from fairdiff.debias.run import _finished_round
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.metrics import OUTSIDE

    out = tmp_path / "lf"
    assert main(["debias", str(base_run), "--method", "distill", "--rounds", "2", "--mix-real", "--judge", "clusters",
                 "--target", "0.5,0.5", "--train-n", "10", "--train-steps", "2", "--steps", "2", "--n", "8",
                 "--pilot-n", "16", "--no-eval", "--out", str(out), "-q"]) == 0
    first_data = tmp_path / "lf-round1-data"
    cj = load_cluster_judge(first_data / "clusters.npz")
    assert cj.method == "spectral"
    base_cfg = load_config(base_run / "config.yaml")
    real = to_uint8(prepare_data(base_cfg.data).train_images)
    v = cj.verdicts(real)
    rows = [r.split(",") for r in (first_data / "mixed" / "groups.csv").read_text().splitlines()[1:]]
    groups = {f: int(g) for f, g in rows}
    assert sum(f.startswith("seed") for f in groups) == 10  # the filtered images, with the filter's verdicts
    assert {f: g for f, g in groups.items() if f.startswith("real")} == {
        f"real{i:06d}.png": int(v[i]) for i in np.flatnonzero(v != OUTSIDE)}
    mixed = json.loads((first_data / "mixed" / "mixed.json").read_text())
    assert mixed["real"] == len(real) and mixed["real_outside"] == int((v == OUTSIDE).sum())
    first_cfg = load_config(tmp_path / "lf-round1" / "config.yaml")
    assert first_cfg.data.train_on == "reference" and first_cfg.method.name == "reweight"
    man = json.loads((tmp_path / "lf-round1" / "manifest.json").read_text())
    assert man["train_counts"] == np.bincount(list(groups.values()), minlength=2).tolist()
    rec = json.loads((out / "debias.json").read_text())
    assert rec["rounds"] == 2 and len(rec["round1"]["pilot_shares"]) == 2 and rec["mixed"]["real"] == len(real)
    assert (tmp_path / "lf-data" / "clusters.npz").is_file()  # the second round's filter records its clusters too
    # a finished first round counts for the same label-free recipe only, not for a labelled judge
    recipe = {"train_n": 10, "train_steps": 2, "mix_real": True}
    first = tmp_path / "lf-round1"
    assert _finished_round(first, base_run, [0.5, 0.5], {**recipe, "judge": "clusters"}, base_cfg.sample.seed)
    assert _finished_round(first, base_run, [0.5, 0.5], recipe, base_cfg.sample.seed) is None
    assert _finished_round(first, base_run, [0.5, 0.5], {**recipe, "judge": "clusters-kmeans"},
                           base_cfg.sample.seed) is None


def test_reweight_and_iw_fine_tune_the_base_toward_the_target(base_run, tmp_path):
    """``--method reweight`` (training labels) and ``--method iw`` (an unlabeled --reference folder) fine-tune the
    base with the protocol's budget into ordinary runs; wrong combinations are one-line errors, no folder."""
    import torch
    from diffusers import UNet2DModel

    from fairdiff.config import load_config
    from fairdiff.utils.images import save_png

    out = tmp_path / "rw"
    assert main(["debias", str(base_run), "--method", "reweight", "--target", "0.3,0.7", "--train-steps", "2",
                 "--no-eval", "--out", str(out), "-q"]) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.method.name == "reweight" and cfg.method.target == [0.3, 0.7] and cfg.eval.target == [0.3, 0.7]
    assert cfg.model.pretrained == str(base_run.resolve()) and cfg.train.steps == 2 and cfg.train.batch_size == 64
    rec = json.loads((out / "debias.json").read_text())
    assert rec["method"] == "reweight" and rec["reference"] is None and rec["finetune_seconds"] > 0
    base_w = UNet2DModel.from_pretrained(base_run / "model" / "unet").conv_in.weight
    tuned_w = UNet2DModel.from_pretrained(out / "model" / "unet").conv_in.weight
    assert tuned_w.shape == base_w.shape and not torch.equal(tuned_w, base_w)  # started from the base, then moved
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        save_png(rng.integers(0, 256, (1, 16, 16), dtype=np.uint8), ref / f"r{i}.png")
    out_iw = tmp_path / "iw"
    assert main(["debias", str(base_run), "--method", "iw", "--target", "0.5,0.5", "--reference", str(ref),
                 "--train-steps", "2", "--no-eval", "--out", str(out_iw), "-q"]) == 0
    cfg = load_config(out_iw / "config.yaml")
    assert cfg.method.name == "iw" and cfg.data.reference_dir == str(ref.resolve())
    assert json.loads((out_iw / "manifest.json").read_text())["reference"]["count"] == 12
    out_rs = tmp_path / "rs"  # --balance resample: batches drawn at the target, recorded in config and record
    assert main(["debias", str(base_run), "--method", "reweight", "--balance", "resample", "--target", "0.3,0.7",
                 "--train-steps", "2", "--no-eval", "--out", str(out_rs), "-q"]) == 0
    assert load_config(out_rs / "config.yaml").method.balance == "resample" and cfg.method.balance == "weights"
    assert json.loads((out_rs / "debias.json").read_text())["balance"] == "resample"
    assert "balance" not in json.loads((out / "debias.json").read_text())
    for bad in (["--method", "iw"], ["--method", "filter", "--reference", str(ref)],
                ["--method", "reweight", "--judge", "auto"], ["--method", "guide", "--train-steps", "3"],
                ["--method", "iw", "--reference", str(tmp_path / "none")],
                ["--method", "iw", "--reference", str(ref), "--balance", "resample"],
                ["--method", "filter", "--balance", "resample"],
                ["--method", "distill", "--balance", "resample", "--train-steps", "2"]):
        assert main(["debias", str(base_run), "--target", "0.5,0.5", *bad, "--out", str(tmp_path / "bad"),
                     "-q"]) == 2
        assert not (tmp_path / "bad").exists()


def test_reweight_over_clusters_reads_no_label(base_run, tmp_path, capsys):
    """``--method reweight --judge clusters``: the groups are the training images' spectral clusters, numbered
    largest first (the manifest's counts fall), reweighted toward the target; k-means clusters take a uniform
    target only (they have no order)."""
    from fairdiff.config import load_config
    from fairdiff.data import prepare_data
    from fairdiff.data.clusters import cluster_groups

    out = tmp_path / "rwc"
    assert main(["debias", str(base_run), "--method", "reweight", "--judge", "clusters", "--target", "0.3,0.7",
                 "--train-steps", "2", "--no-eval", "--out", str(out)]) == 0
    assert "spectral clusters (no label)" in capsys.readouterr().out
    cfg = load_config(out / "config.yaml")
    assert cfg.method.labels == "clusters" and cfg.method.clustering == "spectral" and cfg.method.target == [0.3, 0.7]
    m = json.loads((out / "manifest.json").read_text())["clusters"]
    expect = cluster_groups(prepare_data(cfg.data).train_images, 2, seed=cfg.train.seed, method="spectral")
    assert m["method"] == "spectral" and m["counts"] == np.bincount(expect, minlength=2).tolist()
    assert m["counts"][0] >= m["counts"][1] > 0  # largest first
    assert json.loads((out / "debias.json").read_text())["groups"] == "spectral"
    out_k = tmp_path / "rwk"
    assert main(["debias", str(base_run), "--method", "reweight", "--judge", "clusters-kmeans", "--target", "0.5,0.5",
                 "--train-steps", "1", "--no-eval", "--out", str(out_k), "-q"]) == 0
    assert load_config(out_k / "config.yaml").method.clustering == "kmeans"
    for bad in (["--judge", "clusters-kmeans", "--target", "0.3,0.7"],
                ["--method", "iw", "--judge", "clusters", "--target", "0.5,0.5"]):
        assert main(["debias", str(base_run), *(["--method", "reweight"] if "iw" not in bad else []), *bad,
                     "--out", str(tmp_path / "bad"), "-q"]) == 2
        assert not (tmp_path / "bad").exists()


def test_guide_controller_end_to_end(base_run, corner_judge_file, tmp_path):
    out = tmp_path / "guided"
    rc = main(["debias", str(base_run), "--method", "guide", "--target", "0.5,0.5", "--n", "8", "--steps", "3",
               "--pilot-n", "16", "--max-pilots", "3", "--judge", str(corner_judge_file), "--no-eval",
               "--out", str(out), "-q"])
    assert rc == 0
    rec = json.loads((out / "debias.json").read_text())
    c = rec["controller"]
    assert c["pilots"][0]["scale"] == 0.0 and 1 <= len(c["pilots"]) <= 3
    assert c["scale"] in [p["scale"] for p in c["pilots"]]
    # the pilot at scale 0 is the base: its shares are the corner judge's on the base's own pilot-seed images
    assert main(["sample", str(base_run), "--n", "16", "--seed", str(c["pilot_seed"]), "--steps", "3",
                 "--out", str(tmp_path / "plain"), "--no-png", "-q"]) == 0
    plain = np.load(tmp_path / "plain" / "samples.npz")["images"]
    assert c["pilots"][0]["shares"][1] == pytest.approx(corner_group(plain).mean())
    assert (out / "heads" / "record.json").is_file()
    z = np.load(out / "samples" / "samples.npz")
    assert z["images"].shape == (8, 1, 16, 16) and z["seeds"].tolist() == list(range(8))
    assert main(["debias", str(base_run), "--method", "filter", "--target", "0.5,0.5", "--heads", "x",
                 "--out", str(tmp_path / "y")]) == 2


def test_distill_two_rounds_corrects_toward_the_first_rounds_miss(base_run, corner_judge_file, tmp_path):
    """``--rounds 2``: the first round in OUT-round1, its pilot shares judged, the second round distilled from the
    base toward 2 t - s1 (clipped, renormalised) and evaluated against the requested target."""
    from fairdiff.config import load_config

    out = tmp_path / "d2"
    assert main(["debias", str(base_run), "--method", "distill", "--rounds", "2", "--target", "0.3,0.7",
                 "--train-n", "10", "--train-steps", "2", "--judge", str(corner_judge_file), "--steps", "2",
                 "--n", "8", "--pilot-n", "64", "--no-eval", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    s1 = np.asarray(rec["round1"]["pilot_shares"])
    want = np.clip(2 * np.array([0.3, 0.7]) - s1, 0.01, 0.99)
    assert rec["rounds"] == 2 and rec["corrected_target"] == pytest.approx((want / want.sum()).tolist())
    assert (tmp_path / "d2-round1" / "model" / "unet").is_dir() and rec["round1"]["pilot_n"] == 64
    assert rec["round1"]["reused"] is False
    # the second round's training set follows the corrected target; the run is scored against the requested one
    z = np.load(tmp_path / "d2-data" / "samples" / "samples.npz")
    from fairdiff.debias import quotas

    assert np.bincount(corner_group(z["images"]), minlength=2).tolist() == quotas(want / want.sum(), 10).tolist()
    assert load_config(out / "config.yaml").eval.target == [0.3, 0.7]
    # an interrupted two-round run resumes at its finished first round (same recipe): round 1 is not trained again
    import shutil

    weights = next((tmp_path / "d2-round1" / "model" / "unet").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    shutil.rmtree(out)
    cmd = ["debias", str(base_run), "--method", "distill", "--rounds", "2", "--target", "0.3,0.7", "--train-n", "10",
           "--judge", str(corner_judge_file), "--steps", "2", "--n", "8", "--pilot-n", "64", "--no-eval", "--out",
           str(out), "-q"]
    assert main([*cmd, "--train-steps", "2"]) == 0
    again = json.loads((out / "debias.json").read_text())
    assert again["round1"]["reused"] is True and weights.stat().st_mtime_ns == stamp
    assert again["corrected_target"] == pytest.approx(rec["corrected_target"])  # the same pilot of the same model
    # another recipe does not take that first round: its folder is refused, not replaced
    shutil.rmtree(out)
    assert main([*cmd, "--train-steps", "3"]) == 2 and weights.stat().st_mtime_ns == stamp
    assert main(["debias", str(base_run), "--method", "filter", "--pilot-n", "64", "--target", "0.5,0.5",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert main(["debias", str(base_run), "--method", "filter", "--rounds", "2", "--target", "0.5,0.5",
                 "--out", str(tmp_path / "x"), "-q"]) == 2


def test_distill_three_rounds_take_the_secant_and_start_from_a_two_round_run(base_run, corner_judge_file, tmp_path):
    """``--rounds 3``: rounds 1 and 2 in OUT-round1 / OUT-round2, each piloted (its pilot.json); round 2 distilled
    toward 2 t - s1, round 3 (OUT) toward the secant through the two rounds' pilots. A finished two-round run seeds
    a three-round one (the protocol's distill3): both its rounds and the first round's recorded pilot are reused."""
    from fairdiff.debias import distill_run
    from fairdiff.debias.run import next_round_target

    common = ["--target", "0.3,0.7", "--train-n", "10", "--train-steps", "2", "--judge", str(corner_judge_file),
              "--steps", "2", "--n", "8", "--pilot-n", "64", "--no-eval", "-q"]
    out = tmp_path / "d3"
    assert main(["debias", str(base_run), "--method", "distill", "--rounds", "3", *common, "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    p1 = json.loads((tmp_path / "d3-round1" / "pilot.json").read_text())
    p2 = json.loads((tmp_path / "d3-round2" / "pilot.json").read_text())
    assert p1["n"] == p2["n"] == 64 and rec["round2"]["pilot_shares"] == p2["shares"]
    t = np.array([0.3, 0.7])
    t2 = np.clip(2 * t - np.array(p1["shares"]), 0.01, 0.99)
    t2 = t2 / t2.sum()
    assert rec["rounds"] == 3 and rec["round2"]["target"] == pytest.approx(t2.tolist())
    assert rec["corrected_target"] == pytest.approx(next_round_target(t, [(t, p1["shares"]), (t2, p2["shares"])]))
    z = np.load(tmp_path / "d3-round2-data" / "samples" / "samples.npz")  # round 2's training set follows t2
    from fairdiff.debias import quotas

    assert np.bincount(corner_group(z["images"]), minlength=2).tolist() == quotas(t2, 10).tolist()
    assert not (out.with_name("d3-round3")).exists() and (out / "model" / "unet").is_dir()
    # a finished two-round run of the same recipe is the first two rounds of a three-round one
    d2 = tmp_path / "e2"
    assert main(["debias", str(base_run), "--method", "distill", "--rounds", "2", *common, "--out", str(d2)]) == 0
    rec2 = json.loads((d2 / "debias.json").read_text())
    from tests.conftest import load_benchmark

    protocol = load_benchmark("protocol")
    e3 = tmp_path / "e3"
    protocol._seed_rounds(d2, e3)
    stamps = [next((tmp_path / f"e3-round{r}" / "model" / "unet").glob("*.safetensors")).stat().st_mtime_ns
              for r in (1, 2)]
    rec3 = distill_run(base_run, e3, [0.3, 0.7], train_n=10, train_steps=2, pilot_n=64, rounds=3, n=8,
                       judge=str(corner_judge_file), steps=2, evaluate=False, progress=False)
    assert rec3["round1"]["reused"] and rec3["round2"]["reused"] and rec3["round1"]["pilot_reused"]
    assert not rec3["round2"]["pilot_reused"]  # the two-round run never piloted its last round
    assert rec3["round1"]["pilot_shares"] == rec2["round1"]["pilot_shares"]
    assert rec3["round2"]["target"] == pytest.approx(rec2["corrected_target"])
    assert stamps == [next((tmp_path / f"e3-round{r}" / "model" / "unet").glob("*.safetensors")).stat().st_mtime_ns
                      for r in (1, 2)]
    with pytest.raises(SystemExit):
        main(["debias", str(base_run), "--method", "distill", "--rounds", "5", *common, "--out", str(tmp_path / "x")])
    from fairdiff.errors import FairdiffError

    with pytest.raises(FairdiffError, match="1 to 4"):
        distill_run(base_run, tmp_path / "x", [0.3, 0.7], rounds=5, progress=False)
    assert not (tmp_path / "x").exists()


def test_label_free_filter_with_clusters(base_run, tmp_path):
    out = tmp_path / "lf"
    assert main(["debias", str(base_run), "--target", "0.5,0.5", "--n", "10", "--judge", "clusters", "--steps", "2",
                 "--batch-size", "64", "--no-eval", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["judge"]["kind"] == "clusters (label-free)" and rec["kept"] == 10
    assert rec["cluster_pilot_n"] == 2000 and len(rec["judge"]["pilot_shares"]) == 2


def test_guide_per_sample_mode(base_run, corner_judge_file, tmp_path):
    out = tmp_path / "gs"
    assert main(["debias", str(base_run), "--method", "guide", "--mode", "sample", "--target", "0.3,0.7", "--n", "20",
                 "--steps", "3", "--pilot-n", "16", "--max-pilots", "2", "--judge", str(corner_judge_file),
                 "--no-eval", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["mode"] == "sample" and len(rec["controller"]["pilots"]) <= 2
    assert np.load(out / "samples" / "samples.npz")["images"].shape[0] == 20


def test_guide_in_x_space_starts_its_controller_at_s0(base_run, corner_judge_file, tmp_path):
    """``--space x``: the loss gradient w.r.t. x_t is added to the model output; the controller's first guided
    pilot is at ``--s0`` (default 1 for x, 100 for h). The option belongs to guide alone."""
    out = tmp_path / "gx"
    assert main(["debias", str(base_run), "--method", "guide", "--space", "x", "--s0", "0.5", "--target", "0.3,0.7",
                 "--n", "8", "--steps", "3", "--pilot-n", "16", "--max-pilots", "2", "--judge",
                 str(corner_judge_file), "--no-eval", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["space"] == "x" and rec["controller"]["s0"] == 0.5
    assert [p["scale"] for p in rec["controller"]["pilots"]] == [0.0, 0.5]
    assert main(["debias", str(base_run), "--method", "filter", "--space", "x", "--target", "0.5,0.5",
                 "--out", str(tmp_path / "fx")]) == 2
    assert main(["debias", str(base_run), "--method", "guide", "--s0", "-1", "--target", "0.5,0.5",
                 "--out", str(tmp_path / "neg")]) == 2


def test_guide_with_a_noise_aware_classifier(base_run, corner_judge_file, tmp_path):
    """``--reader classifier``: a noise-aware group classifier is fitted on the run's training images and saved
    in the folder; a second run reads it back (no fitting); heads-only options are refused in one line."""
    from fairdiff.models.discriminator import load_discriminator

    out = tmp_path / "gc"
    common = ["--target", "0.3,0.7", "--n", "8", "--steps", "3", "--pilot-n", "16", "--max-pilots", "2",
              "--judge", str(corner_judge_file), "--no-eval", "-q"]
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier-steps", "5",
                 *common, "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["reader"] == "classifier" and rec["classifier"]["fitted"] and rec["classifier"]["steps"] == 5
    assert len(rec["classifier"]["heldout"]) == 4 and rec["controller"]["s0"] == 1.0 and rec["eta"] == 1.0
    # guided at eta 1, the base's config samples at eta 0: the valid-rate floor comes from the base as configured
    ref = rec["controller"]["reference_pilot"]
    assert ref["scale"] == 0.0 and rec["controller"]["valid_floor"] == pytest.approx(ref["valid_rate"] - 0.02)
    clf = load_discriminator(out / "classifier")
    assert clf.out_dim == 2 and (out / "classifier" / "record.json").is_file()
    again = tmp_path / "gc2"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier",
                 str(out / "classifier"), *common, "--no-pilot-cache", "--out", str(again)]) == 0
    rec2 = json.loads((again / "debias.json").read_text())
    assert rec2["classifier"]["fitted"] is False
    # the same classifier, seeds and scales: the same pilots, judged anew (what the pilot cache relies on)
    assert rec2["controller"]["pilots"] == rec["controller"]["pilots"]
    assert rec2["controller"]["cache"]["hits"] == 0 and rec2["controller"]["cache"]["path"] is None
    # with the cache (the default), the classifier read back from disk has the same digest: every pilot, the
    # reference pilot included, comes from the first run's cache file
    third = tmp_path / "gc3"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier",
                 str(out / "classifier"), *common, "--out", str(third)]) == 0
    rec3 = json.loads((third / "debias.json").read_text())
    assert rec3["controller"]["cache"]["key"] == rec["controller"]["cache"]["key"]
    assert rec3["controller"]["cache"]["hits"] == len(rec["controller"]["pilots"]) + 1
    assert rec3["controller"]["pilots"] == rec["controller"]["pilots"]
    assert rec3["controller"]["scale"] == rec["controller"]["scale"]
    # another classifier (fewer fitting steps: other weights) is another key: nothing comes from the cache
    other = tmp_path / "gc4"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier-steps", "3",
                 *common, "--out", str(other)]) == 0
    rec4 = json.loads((other / "debias.json").read_text())
    assert rec4["controller"]["cache"]["key"] != rec["controller"]["cache"]["key"]
    assert rec4["controller"]["cache"]["hits"] == 0
    # --min-t: guidance only at the early (noisy) steps is another guidance, so another cache key; at a min-t
    # above every sampled timestep nothing is guided and each pilot is the unguided one
    late = tmp_path / "gc5"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier",
                 str(out / "classifier"), *common, "--min-t", "999", "--out", str(late)]) == 0
    rec5 = json.loads((late / "debias.json").read_text())
    assert rec5["min_t"] == 999 and rec5["controller"]["cache"]["key"] != rec["controller"]["cache"]["key"]
    shares = {json.dumps(p_["shares"]) for p_ in rec5["controller"]["pilots"]}
    assert len(rec5["controller"]["pilots"]) == 2 and len(shares) == 1  # scale 0 and scale 1 draw the same images
    assert main(["debias", str(base_run), "--method", "guide", "--min-t", "500", *common,
                 "--out", str(tmp_path / "bad3")]) == 2  # heads: no --min-t
    assert main(["debias", str(base_run), "--method", "filter", "--min-t", "500", "--target", "0.5,0.5",
                 "--out", str(tmp_path / "bad4"), "-q"]) == 2
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--space", "x", *common,
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["debias", str(base_run), "--method", "guide", "--classifier", str(out / "classifier"), *common,
                 "--out", str(tmp_path / "bad2")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((out / "classifier" / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((out / "classifier" / "model.safetensors").read_bytes()[:100])
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "classifier", "--classifier",
                 str(broken), *common, "--out", str(tmp_path / "bad3")]) == 2


def test_guide_reads_the_predicted_clean_image_with_a_third_judge(base_run, corner_judge_file, tmp_path):
    """``--reader x0``: a domain CNN that is neither the test nor the validation judge (seed eval.seed + 2) reads
    the denoiser's predicted clean image; nothing is fitted or saved beside the samples; scale 0 and a min-t above
    every timestep draw the unguided images; options of the other readers are refused in one line."""
    from fairdiff.config import load_config

    common = ["--target", "0.3,0.7", "--n", "8", "--steps", "3", "--pilot-n", "16", "--max-pilots", "3",
              "--judge", str(corner_judge_file), "--no-eval", "-q"]
    out = tmp_path / "x0"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "x0", *common, "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    seed = load_config(base_run / "config.yaml").eval.seed
    assert rec["reader"] == "x0" and rec["x0"]["seed"] == seed + 2 and rec["x0"]["fitted"] is False
    assert rec["eta"] == 1.0 and rec["controller"]["s0"] == 1.0 and rec["space"] == "x"
    assert rec["judge"]["name"] == "corner" and not (out / "x0").exists() and not (out / "classifier").exists()
    pilots = rec["controller"]["pilots"]
    assert pilots[0]["scale"] == 0.0 and len(pilots) >= 2
    late = tmp_path / "x0late"
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "x0", *common, "--min-t", "999",
                 "--no-pilot-cache", "--out", str(late)]) == 0
    rec2 = json.loads((late / "debias.json").read_text())
    assert len({json.dumps(p_["shares"]) for p_ in rec2["controller"]["pilots"]}) == 1  # nothing guided
    assert rec2["controller"]["pilots"][0] == pilots[0]  # the unguided pilot is the same images either way
    for bad in (["--classifier", str(tmp_path)], ["--space", "x"], ["--heads", str(tmp_path)]):
        assert main(["debias", str(base_run), "--method", "guide", "--reader", "x0", *common, *bad,
                     "--out", str(tmp_path / "bad")]) == 2
    lf = [*common[:-4], "--judge", "clusters", "--no-eval", "-q"]
    assert main(["debias", str(base_run), "--method", "guide", "--reader", "x0", *lf,
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_label_free_classifier_guidance_learns_the_clusters_of_its_own_images(base_run, tmp_path):
    """``--judge clusters --reader classifier``: the noise-aware classifier is fitted on the base's own images
    labelled by their k-means clusters, which are saved beside it; the guidance divides out the base's shares over
    those clusters; a second run reads classifier and clusters back; a labelled classifier is refused."""
    from fairdiff.debias.clusters import load_cluster_judge

    common = ["--target", "0.5,0.5", "--n", "8", "--steps", "2", "--pilot-n", "16", "--max-pilots", "2",
              "--judge", "clusters", "--reader", "classifier", "--no-eval", "-q"]
    out = tmp_path / "lfc"
    assert main(["debias", str(base_run), "--method", "guide", "--classifier-steps", "5", *common,
                 "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["reader"] == "classifier" and rec["judge"]["kind"] == "clusters (label-free)"
    c = rec["classifier"]
    assert c["fitted"] and "clusters" in c["labels"] and c["cluster_pilot_n"] == 2000 and len(c["heldout"]) == 4
    cj = load_cluster_judge(out / "classifier" / "clusters.npz")
    assert cj.num_classes == 2 and cj.pilot_shares == pytest.approx(rec["judge"]["pilot_shares"], abs=1e-4)
    saved = json.loads((out / "classifier" / "record.json").read_text())
    assert saved["seconds"] == c["seconds"] and saved["cluster_pilot_n"] == 2000  # the whole one-time cost
    shares = saved["train_shares"]
    # the shares divided out are those of the fitting images over the clusters: the largest cluster comes first
    assert sum(shares) == pytest.approx(1.0) and shares[0] >= shares[1] - 0.1
    assert rec["judge_role"].startswith("label-free clusters (classifier's")
    again = tmp_path / "lfc2"
    assert main(["debias", str(base_run), "--method", "guide", "--classifier", str(out / "classifier"), *common,
                 "--no-pilot-cache", "--out", str(again)]) == 0
    rec2 = json.loads((again / "debias.json").read_text())
    assert rec2["classifier"]["fitted"] is False and rec2["controller"]["pilots"] == rec["controller"]["pilots"]
    labelled = tmp_path / "labelled"  # a classifier folder without clusters (as a labelled fit writes it)
    shutil.copytree(out / "classifier", labelled)
    (labelled / "clusters.npz").unlink()
    assert main(["debias", str(base_run), "--method", "guide", "--classifier", str(labelled), *common,
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_label_free_guide_fits_heads_on_clusters_of_its_own_images(base_run, tmp_path):
    """The sampling-time twin of the label-free filter: heads fitted on the recorded h of the base's own images,
    labelled by their k-means clusters; the pilots are judged by the same clusters; no label or judge anywhere."""
    from fairdiff.models.heads import load_heads, read_heads_record

    out = tmp_path / "lfg"
    assert main(["debias", str(base_run), "--method", "guide", "--target", "0.5,0.5", "--n", "8", "--steps", "2",
                 "--pilot-n", "16", "--max-pilots", "2", "--judge", "clusters", "--no-eval", "--out", str(out),
                 "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    assert rec["judge"]["kind"] == "clusters (label-free)" and rec["heads"]["labels"] == "clusters"
    assert rec["judge_role"].startswith("label-free clusters")
    heads = load_heads(out / "heads")
    assert heads.config.mode == "generated" and heads.config.num_steps == 2
    assert heads.config.attributes == {"group": 2}
    acc = read_heads_record(out / "heads")["heldout_accuracy"]["group"]
    assert len(acc) == 2 and all(0.0 <= a <= 1.0 for a in acc)
    # the pilot at scale 0 is the base judged by the clusters: its shares sum to 1 over the two clusters
    assert sum(rec["controller"]["pilots"][0]["shares"]) == pytest.approx(1.0)
    assert main(["debias", str(base_run), "--method", "guide", "--target", "0.5,0.5", "--judge", "clusters",
                 "--heads", str(out / "heads"), "--out", str(tmp_path / "x"), "-q"]) == 2


def test_guide_then_filter_keeps_the_target_exactly(base_run, corner_judge_file, tmp_path):
    """``--then-filter``: guidance at the scale the controller found, then images kept to quota by the judge; the
    kept images are guided draws (their seeds are recorded), their judged groups meet the quotas exactly."""
    out = tmp_path / "gf"
    assert main(["debias", str(base_run), "--method", "guide", "--then-filter", "--target", "0.3,0.7", "--n", "10",
                 "--steps", "3", "--pilot-n", "16", "--max-pilots", "2", "--judge", str(corner_judge_file),
                 "--no-eval", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    z = np.load(out / "samples" / "samples.npz")
    assert rec["then_filter"] is True and rec["kept"] == 10 and rec["drawn"] >= 10
    assert rec["drawn_per_kept"] == pytest.approx(rec["drawn"] / 10, abs=1e-3)
    assert np.bincount(corner_group(z["images"]), minlength=2).tolist() == [3, 7]
    seeds = z["seeds"].tolist()
    assert seeds == sorted(seeds) and len(set(seeds)) == 10 and max(seeds) < rec["drawn"]
    # one-line refusals: --max-draws without --then-filter, --then-filter outside guide, a max below --n
    for bad in (["--method", "guide", "--max-draws", "50"], ["--method", "filter", "--then-filter"],
                ["--method", "guide", "--then-filter", "--max-draws", "5"]):
        assert main(["debias", str(base_run), "--target", "0.5,0.5", "--n", "10", *bad, "--judge",
                     str(corner_judge_file), "--out", str(tmp_path / "bad"), "-q"]) == 2
        assert not (tmp_path / "bad").exists()


def test_interrupted_filter_continues_where_it_stopped(base_run, corner_judge_file, tmp_path, monkeypatch, capsys):
    import fairdiff.sampling

    args = ["--target", "0.3,0.7", "--n", "24", "--judge", str(corner_judge_file), "--steps", "3",
            "--batch-size", "8", "--no-eval", "-q"]
    whole = tmp_path / "whole"
    assert main(["debias", str(base_run), *args, "--out", str(whole)]) == 0
    real, calls = fairdiff.sampling.sample, []

    def stops_on_the_third_batch(*a, **k):
        calls.append(list(a[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "resumed"
    monkeypatch.setattr(fairdiff.sampling, "sample", stops_on_the_third_batch)
    assert main(["debias", str(base_run), *args, "--out", str(out)]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    state = tmp_path / ".resumed.partial.npz"
    assert state.is_file() and not out.exists()
    drawn_before = sum(len(c) for c in calls[:2])
    calls.clear()
    monkeypatch.setattr(fairdiff.sampling, "sample", lambda *a, **k: (calls.append(list(a[2])), real(*a, **k))[1])
    assert main(["debias", str(base_run), *args, "--out", str(out)]) == 0
    assert min(calls[0]) == json.loads((whole / "debias.json").read_text())["seed"] + drawn_before  # not again
    a, b = np.load(whole / "samples" / "samples.npz"), np.load(out / "samples" / "samples.npz")
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_array_equal(a["images"], b["images"])
    ra, rb = json.loads((whole / "debias.json").read_text()), json.loads((out / "debias.json").read_text())
    assert (ra["drawn"], ra["drawn_shares"], ra["batches"]) == (rb["drawn"], rb["drawn_shares"], rb["batches"])
    assert not state.exists()  # served and removed once the folder is written


def test_guided_draw_in_chunks_is_the_one_call_draw_and_continues_after_an_interruption(
        base_run, corner_judge_file, tmp_path, monkeypatch):
    """Per-sample guidance's final images drawn in chunks (each saved) are those of one call, and a run stopped
    between chunks continues from the last one saved (its pilots come from the pilot cache)."""
    import fairdiff.debias.run as drun

    args = ["--method", "guide", "--mode", "sample", "--target", "0.3,0.7", "--n", "40", "--steps", "3",
            "--pilot-n", "16", "--max-pilots", "2", "--judge", str(corner_judge_file), "--no-eval", "-q"]
    whole = tmp_path / "whole"
    assert main(["debias", str(base_run), *args, "--out", str(whole)]) == 0
    real, calls = drun._draw_in_chunks, []
    monkeypatch.setattr(drun, "DRAW_CHUNK", 16)

    def stopping(draw, n, batch, assign, path, key):
        def counted(a, b, asg):
            calls.append((a, b))
            if len(calls) == 2 and stop:
                raise KeyboardInterrupt
            return draw(a, b, asg)
        return real(counted, n, batch, assign, path, key)

    monkeypatch.setattr(drun, "_draw_in_chunks", stopping)
    out = tmp_path / "chunked"
    stop = True
    assert main(["debias", str(base_run), *args, "--out", str(out)]) == 130
    assert (tmp_path / ".chunked.partial.npz").is_file() and not out.exists()
    calls.clear()
    stop = False
    assert main(["debias", str(base_run), *args, "--out", str(out)]) == 0
    assert calls == [(16, 32), (32, 40)]  # the first chunk was kept
    a, b = np.load(whole / "samples" / "samples.npz"), np.load(out / "samples" / "samples.npz")
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_array_equal(a["images"], b["images"])
    assert json.loads((out / "debias.json").read_text())["controller"]["scale"] == \
        json.loads((whole / "debias.json").read_text())["controller"]["scale"]
    assert not (tmp_path / ".chunked.partial.npz").exists()
