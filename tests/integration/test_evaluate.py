"""``fairdiff evaluate`` / ``compare`` end to end on a tiny synthetic run, and exit code 2 for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fairdiff.cli.main import main
from fairdiff.config import load_config, save_config

OVERRIDES = [
    "data.source=synthetic", "data.resolution=16", "data.synthetic_size=300", "data.heldout_per_group=20",
    "train.steps=5", "train.batch_size=16", "train.checkpoint_every=5", "sample.steps=3",
    "eval.n_samples=48", "eval.bootstrap=200", "eval.classifier_steps=120",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from fairdiff.sampling import sample_run
    from fairdiff.training import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDIFF_CACHE", str(tmp_path_factory.mktemp("cache")))
        out = tmp_path_factory.mktemp("runs") / "syn"
        cfg = load_config(None, OVERRIDES)
        train(cfg, out, quiet=True)
        # sampled here, once: every test finds RUN/samples whichever runs first or alone
        sample_run(out, cfg.eval.n_samples, seed=cfg.sample.seed, steps=cfg.sample.steps,
                   batch_size=cfg.sample.batch_size, scheduler=cfg.sample.scheduler, eta=cfg.sample.eta,
                   progress=False)
        yield out


def test_evaluate_cli_end_to_end(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "FD=" in printed and "copy-rate=" in printed
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("fd_hard", "fd_hard_ci", "fd_soft", "kl", "spd", "mean_pairwise_gap", "shares", "shares_ci", "n",
                "target", "classifier", "domain_fid", "precision", "recall", "bootstrap"):
        assert key in m, key
    assert m["n"] == 48 and m["target"] == [0.5, 0.5]
    assert m["classifier"]["accuracy"] >= 0.9 and m["classifier"]["name"].startswith("domain-cnn")
    assert abs(sum(m["shares"]) - 1) < 1e-9
    lo, hi = m["fd_hard_ci"]
    assert lo <= m["fd_hard"] + 1e-9 and m["fd_hard"] <= hi + 1e-9
    assert m["fd_hard"] == pytest.approx(np.sqrt(2) * abs(m["shares"][1] - 0.5))
    assert m["bootstrap"]["resamples"] == 200
    report = (run_dir / "report.md").read_text()
    assert "shares.png" in report and "| FD forced-choice (hard, L2) |" in report and "Training run" in report
    assert "| strict FD (headline) |" in report and "## Headline: strict FD (both judges)" in report
    # open set: the strict FD over (p_0, p_1, p_outside) leads metrics.json; the second judge sits beside it
    assert list(m)[3] == "fd_strict" and m["fd_forced"] == m["fd_hard"]
    p = np.array(m["strict_shares"])
    assert p.sum() == pytest.approx(1.0) and m["valid_rate"] == pytest.approx(1 - p[2])
    assert m["fd_strict"] == pytest.approx(np.sqrt((p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 + p[2] ** 2))
    assert m["fd_strict"] >= m["fd_strict_ci"][0] - 1e-9 and m["fd_strict"] <= m["fd_strict_ci"][1] + 1e-9
    assert len(m["corrected_shares"]) == 2 and len(m["confusion"]) == 2 and m["confusion_n"] == 40
    assert m["judge2"]["classifier"]["kind"] == "pca-logistic-regression" and "fd_strict" in m["judge2"]
    assert isinstance(m["judges_agreement"]["disagree"], bool)
    assert (run_dir / "shares.png").stat().st_size > 0 and (run_dir / "samples.png").exists()
    c = m["copying"]  # the copying check against the run's own training images
    assert c["n"] == 48 and c["train_n"] == sum(json.loads((run_dir / "manifest.json").read_text())["train_counts"])
    assert 0.0 <= c["copy_rate"] <= 1.0 and c["trained_on"] == "train" and "## Copying check" in report


def test_copying_check_flags_samples_that_are_training_images(run_dir, tmp_path):
    """Replace a run's samples by its own training images: the copying check must say so."""
    from fairdiff.data import prepare_data
    from fairdiff.evaluation import evaluate_run
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.runs import read_run_config

    run = tmp_path / "copier"
    shutil.copytree(run_dir, run)
    train = prepare_data(read_run_config(run).data).train_images[:48]
    imgs = to_uint8(train)
    np.savez(run / "samples" / "samples.npz", images=imgs, seeds=np.arange(len(imgs)))
    m = evaluate_run(run, bootstrap=10, progress=False)
    assert m["copying"]["copy_rate"] == 1.0 and m["copying"]["nn_train_median"] == 0.0
    fresh = evaluate_run(run_dir, bootstrap=10, out_dir=tmp_path / "fresh", progress=False)["copying"]
    assert fresh["copy_rate"] < 1.0 and fresh["nn_train_median"] > 0.0


def test_evaluate_run_api_and_options(run_dir, tmp_path):
    from fairdiff.evaluation import evaluate_run

    m = evaluate_run(run_dir, target=[0.8, 0.2], bootstrap=50, out_dir=tmp_path / "ev", seed=3, progress=False)
    assert m["target"] == [0.8, 0.2] and m["bootstrap"]["resamples"] == 50 and m["bootstrap"]["seed"] == 3
    assert (tmp_path / "ev" / "metrics.json").exists() and (tmp_path / "ev" / "report.md").exists()
    # the same samples with the same seed give the same numbers
    m2 = evaluate_run(run_dir, target=[0.8, 0.2], bootstrap=50, out_dir=tmp_path / "ev2", seed=3, progress=False)
    assert m2["fd_hard_ci"] == m["fd_hard_ci"] and m2["fd_strict_ci"] == m["fd_strict_ci"]


def test_evaluate_replicates(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--replicates", "4", "--out", str(tmp_path / "rep"), "-q"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    rep = m["replicates"]
    assert rep["replicates"] == 4 and rep["n_each"] == 12 and len(rep["fd_strict"]["values"]) == 4
    assert rep["fd_strict"]["mean"] == pytest.approx(np.mean(rep["fd_strict"]["values"]))
    assert "## Replicates" in (tmp_path / "rep" / "report.md").read_text()
    _bad(["evaluate", str(run_dir), "--replicates", "0", "-q"], capsys, "--replicates")
    _bad(["evaluate", str(run_dir), "--replicates", "1000", "-q"], capsys, "--replicates")


def test_evaluate_samples_folder_with_config(run_dir, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    save_config(load_config(run_dir / "config.yaml"), cfg_file)
    samples = tmp_path / "s"
    shutil.copytree(run_dir / "samples", samples)
    assert main(["evaluate", str(samples), "--config", str(cfg_file), "--n", "20", "--bootstrap", "100", "-q"]) == 0
    m = json.loads((samples / "metrics.json").read_text())
    assert m["n"] == 20
    # a folder of PNGs only (no samples.npz) works too
    (samples / "samples.npz").unlink()
    assert main(["evaluate", str(samples), "--config", str(cfg_file), "--bootstrap", "0", "-q",
                 "--out", str(tmp_path / "png")]) == 0
    assert json.loads((tmp_path / "png" / "metrics.json").read_text())["n"] == 48


def _bad(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_inputs_exit_2(run_dir, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    save_config(load_config(run_dir / "config.yaml"), cfg_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    _bad(["evaluate", str(empty), "--config", str(cfg_file), "-q"], capsys, "empty")
    big = tmp_path / "big"
    big.mkdir()
    np.savez(big / "samples.npz", images=np.zeros((4, 1, 28, 28), np.uint8), seeds=np.arange(4))
    _bad(["evaluate", str(big), "--config", str(cfg_file), "-q"], capsys, "takes images 1x16x16")
    _bad(["evaluate", str(run_dir), "--target", "0.2,0.3,0.5", "-q"], capsys, "3 values but there are 2 groups")
    _bad(["evaluate", str(run_dir), "--target", "0.6,0.6", "-q"], capsys, "sum to 1")
    _bad(["evaluate", str(run_dir), "--target", "half,half", "-q"], capsys, "comma-separated")
    _bad(["evaluate", str(tmp_path / "nope"), "-q"], capsys, "no such")
    _bad(["evaluate", str(big), "-q"], capsys, "--config")


def test_compare_runs(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "-q"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((run_dir / "metrics.json").read_text())
    m["run"]["name"] = "other"
    m["run"]["train_seed"] = 1  # same setup, another training seed -> a mean +- std row
    m["shares"] = [0.5, 0.5]
    m["fd_hard"] = 0.0
    (other / "metrics.json").write_text(json.dumps(m))
    assert main(["compare", str(run_dir), str(other), "--out", str(tmp_path / "cmp"), "-q"]) == 0
    out = tmp_path / "cmp"
    assert (out / "compare.md").exists() and (out / "compare.png").exists()
    assert "Mean +- std over training seeds" in (out / "compare.md").read_text()
    lines = (out / "compare.csv").read_text().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run,method")


def test_conditional_samples_report_rates(tmp_path):
    from fairdiff.config import DataConfig, EvalConfig
    from fairdiff.evaluation import evaluate_samples
    from fairdiff.evaluation.judges import from_callable

    # a classifier that calls an image group 1 when it is bright; condition g asks for group g
    clf = from_callable(lambda x: np.stack([np.zeros(len(x)), x.reshape(len(x), -1).mean(1) / 50.0 - 1.0], 1),
                        "bright", 2, accuracy=1.0)
    imgs = np.zeros((8, 1, 16, 16), np.uint8)
    imgs[[1, 4, 5, 6]] = 255  # conditions 0,0,0,0,1,1,1,1 -> hits 3/4 for group 0 and 3/4 for group 1
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.savez(tmp_path / "samples.npz", images=imgs, seeds=np.arange(8), class_labels=labels)
    data = DataConfig(source="synthetic", resolution=16, synthetic_size=60, heldout_per_group=5)
    m = evaluate_samples(tmp_path, data, EvalConfig(bootstrap=100), classifier=clf, progress=False)
    assert m["conditional_rates"] == [0.75, 0.75] and m["conditional_spd"] == 0.0
    assert len(m["conditional_rates_ci"]) == 2
    assert "Conditional scenario" in (tmp_path / "report.md").read_text()


def test_torchscript_fid_features(tmp_path):
    import torch

    from fairdiff.config import DataConfig, EvalConfig
    from fairdiff.evaluation import evaluate_samples
    from fairdiff.evaluation.judges import from_callable

    class Pool(torch.nn.Module):  # stands in for a local Inception TorchScript: [N,3,299,299] -> [N,D]
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    ts = tmp_path / "feat.pt"
    torch.jit.script(Pool()).save(str(ts))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", images=rng.integers(0, 256, (12, 1, 16, 16), dtype=np.uint8))
    clf = from_callable(lambda x: np.zeros((len(x), 2)), "flat", 2, accuracy=0.5)
    data = DataConfig(source="synthetic", resolution=16, synthetic_size=60, heldout_per_group=5)
    m = evaluate_samples(tmp_path, data, EvalConfig(bootstrap=20, fid_features=str(ts)), classifier=clf,
                         progress=False)
    assert m["quality_features"] == "inception:feat.pt" and m["domain_fid"] is None and m["reference_n"] == 10

    # by hand: the same features written out (RGB, 299x299 bilinear, [-1, 1), 4x4 average pooling), and the
    # Frechet distance through scipy's matrix square root
    from scipy import linalg

    from fairdiff.evaluation.samples import reference_uint8

    def feats(u8):
        x = torch.from_numpy(u8).float().repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        return torch.nn.functional.adaptive_avg_pool2d(x.clamp(0, 255) / 128.0 - 1.0, 4).flatten(1).double().numpy()

    def fid(a, b):
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = linalg.sqrtm(s1 @ s2).real
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))

    ref, _ = reference_uint8(data)
    gen = np.load(tmp_path / "samples.npz")["images"]
    assert m["fid"] == pytest.approx(fid(feats(ref), feats(gen)), rel=1e-3)
    assert m["fid"] > 1.0  # uniform noise is far from the synthetic images
    # the reference images themselves as samples: FID 0, every image inside the other set's k-NN manifold
    same = tmp_path / "same"
    same.mkdir()
    np.savez(same / "samples.npz", images=ref)
    m0 = evaluate_samples(same, data, EvalConfig(bootstrap=20, fid_features=str(ts)), classifier=clf, progress=False)
    assert m0["fid"] == pytest.approx(0.0, abs=1e-6) and m0["precision"] == 1.0 and m0["recall"] == 1.0


def test_re_evaluation_keeps_the_bench_timing(run_dir, tmp_path):
    from fairdiff.evaluation import evaluate_run

    out = tmp_path / "again"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"timing": {"train_s": 12.5, "train_and_sample_s": 20.0}}))
    m = evaluate_run(run_dir, bootstrap=20, out_dir=out, progress=False)
    assert m["timing"] == {"train_s": 12.5, "train_and_sample_s": 20.0}
    assert json.loads((out / "metrics.json").read_text())["timing"]["train_s"] == 12.5
    assert "fd_strict" in m
