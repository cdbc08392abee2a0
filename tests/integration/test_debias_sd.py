"""``fairdiff debias --sd FOLDER --prompt P``: generate-and-filter (and guidance to the target with its controller)
of one prompt of the tiny random SD stack (``data tiny-sd``), judged by a brightness judge whose answer is known:
the kept images are the pipeline's own images of their recorded seeds, their judged groups meet the quotas, the
controller's unguided pilot is the pipeline's own, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from tests.conftest import Brightness, brightness  # noqa: E402

PROMPT = "a photo of a doctor"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fairdiff.sampling.sd import generate_sd, load_sd_any

    root = tmp_path_factory.mktemp("sdfilter")
    assert main(["data", "tiny-sd", str(root / "sd"), "--resolution", "16"]) == 0
    pipe = load_sd_any(root / "sd", device="cpu")
    first = generate_sd(pipe, PROMPT, list(range(24)), size=16, steps=2, guidance_scale=2.0, batch_size=8)
    thr = float(np.median(brightness(first)))  # half the images on each side: both groups are drawn
    torch.jit.script(Brightness(threshold=thr)).save(str(root / "bright.pt"))
    assert main(["heads", "fit", "--sd", str(root / "sd"), "--prompt", PROMPT, "--judge", str(root / "bright.pt"),
                 "--out", str(root / "heads"), "--n", "64", "--steps", "2", "--cfg-scale", "2.0", "--batch-size",
                 "32", "-q"]) == 0
    return {"root": root, "sd": root / "sd", "judge": root / "bright.pt", "thr": thr, "pipe": pipe,
            "heads": root / "heads"}


def test_sd_filter_keeps_the_pipelines_images_to_quota(world, tmp_path):
    from fairdiff.sampling.sd import generate_sd

    out = tmp_path / "kept"
    assert main(["debias", "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.25,0.75", "--n", "8",
                 "--steps", "2", "--cfg-scale", "2.0", "--judge", str(world["judge"]), "--out", str(out),
                 "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    z = np.load(out / "samples" / "samples.npz")
    images, seeds = z["images"], z["seeds"].tolist()
    assert images.shape == (8, 3, 16, 16) and rec["kept"] == 8 and rec["drawn"] >= 8
    groups = (brightness(images) > world["thr"]).astype(int)
    assert np.bincount(groups, minlength=2).tolist() == [2, 6]
    # the kept images are the pipeline's own images of those seeds (no other draw path)
    again = generate_sd(world["pipe"], PROMPT, seeds, size=16, steps=2, guidance_scale=2.0, batch_size=8)
    assert np.array_equal(again, images)
    m = json.loads((out / "metrics.json").read_text())
    assert m["valid_shares"] == pytest.approx([0.25, 0.75]) and m["prompt"] == PROMPT
    assert "same judge keeps and scores" in rec["judge_role"] and (out / "report.md").is_file()


def test_sd_filter_with_a_judge_pair_keeps_by_the_validation_judge_and_scores_by_the_test_judge(world, tmp_path,
                                                                                                monkeypatch):
    """``--judge auto`` with a data config: the validation CNN keeps, the test CNN scores. Here the validation
    judge is the test judge with its groups swapped, so quotas met by the one read as the swapped shares by the
    other: the scored shares are the test judge's, not the ones the filter aimed at."""
    from types import SimpleNamespace

    import fairdiff.evaluation.audit_inputs as audit_inputs
    import fairdiff.evaluation.judges as judges
    from fairdiff.debias.sd import filter_sd_prompt
    from fairdiff.evaluation.judges import load_classifier

    swapped = world["root"] / "swapped.pt"
    torch.jit.script(Brightness(threshold=world["thr"], scale=-1000.0)).save(str(swapped))
    real = audit_inputs.make_judge
    chosen = []
    monkeypatch.setattr(audit_inputs, "make_judge", lambda spec, data_cfg=None, eval_cfg=None, **kw: real(
        str(world["judge"]), None, eval_cfg, **kw))
    monkeypatch.setattr(judges, "load_validation_judge",
                        lambda spec, data_cfg, eval_cfg=None, progress=False: chosen.append(spec) or load_classifier(
                            str(swapped), None))
    out = tmp_path / "pair"
    rec = filter_sd_prompt(world["sd"], out, [0.25, 0.75], prompt=PROMPT, n=8, steps=2, cfg_scale=2.0,
                           judge="auto", data_cfg=SimpleNamespace(source="stand-in"), progress=False)
    assert chosen == ["auto"] and rec["validation_judge"] is not None
    assert rec["judge_role"].startswith("validation domain CNN") and "test domain CNN" in rec["judge_role"]
    groups = (brightness(np.load(out / "samples" / "samples.npz")["images"]) > world["thr"]).astype(int)
    assert np.bincount(groups, minlength=2).tolist() == [6, 2]  # [2, 6] by the swapped (validation) judge
    assert rec["metrics"]["valid_shares"] == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("change, says", [
    ({"--method": "distill"}, "--sd takes --method filter or guide"),
    ({"--heads": "h"}, "not an option of 'debias --sd --method filter'"),
    ({"--prompt": " "}, "needs one --prompt"),
    ({"--then-filter": None}, "not an option of 'debias --sd --method filter'"),
    ({"--judge": "clusters"}, "--judge clusters is for trained runs"),
    ({"--max-draws": "3"}, "--max-draws must be at least --n"),
    ({"--config": "none.yaml"}, "no such file"),
    ({"--judge": "auto"}, "--judge auto is trained on a data source"),
])
def test_sd_filter_bad_input_is_one_line(world, tmp_path, capsys, change, says):
    opts = {"--prompt": PROMPT, "--target": "0.5,0.5", "--n": "4", "--steps": "2", "--judge": str(world["judge"]),
            "--out": str(tmp_path / "bad"), **change}
    args = ["debias", "--sd", str(world["sd"]), "-q"]
    for k, v in opts.items():
        args += [k] if v is None else [k, v]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "bad").exists()


def test_sd_guide_controller_and_then_filter(world, tmp_path):
    """``--method guide``: pilots at scale 0, then ``--s0``; the unguided pilot's shares are the judge's on the
    pipeline's own images of the pilot seeds; ``--then-filter`` keeps guided images to quota."""
    from fairdiff.debias.run import PILOT_SEED
    from fairdiff.sampling.sd import generate_sd

    out = tmp_path / "guided"
    args = ["debias", "--sd", str(world["sd"]), "--method", "guide", "--heads", str(world["heads"]), "--prompt",
            PROMPT, "--target", "0.2,0.8", "--n", "8", "--pilot-n", "16", "--max-pilots", "3", "--s0", "5",
            "--judge", str(world["judge"]), "-q"]
    assert main([*args, "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    c = rec["controller"]
    assert [p["scale"] for p in c["pilots"]][:2] == [0.0, 5.0] and len(c["pilots"]) <= 3
    assert rec["steps"] == 2 and rec["cfg_scale"] == 2.0  # the heads' own
    plain = generate_sd(world["pipe"], PROMPT, list(range(PILOT_SEED, PILOT_SEED + 16)), size=16, steps=2,
                        guidance_scale=2.0, batch_size=8)
    assert c["pilots"][0]["shares"][1] == pytest.approx((brightness(plain) > world["thr"]).mean())
    assert np.load(out / "samples" / "samples.npz")["images"].shape == (8, 3, 16, 16)
    kept = tmp_path / "guided-kept"
    assert main([*args, "--then-filter", "--out", str(kept)]) == 0
    rec2 = json.loads((kept / "debias.json").read_text())
    z = np.load(kept / "samples" / "samples.npz")
    assert rec2["then_filter"] and rec2["controller"]["scale"] == c["scale"]
    assert np.bincount((brightness(z["images"]) > world["thr"]).astype(int), minlength=2).tolist() == [2, 6]
    for bad in (["--steps", "3"], ["--mode", "sample"], ["--reader", "classifier"]):
        assert main([*args, *bad, "--out", str(tmp_path / "bad")]) == 2
    assert main([a for a in args if a != str(world["heads"]) and a != "--heads"] + ["--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "b").exists()


def test_run_and_sd_are_exclusive(world, tmp_path):
    assert main(["debias", str(world["sd"]), "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.5,0.5",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert main(["debias", "--target", "0.5,0.5", "--out", str(tmp_path / "y"), "-q"]) == 2


def _stopped_and_continued(monkeypatch, module, name: str, cmd: list[str], tmp_path, stop) -> tuple[list, list]:
    """``cmd`` run whole, then stopped (KeyboardInterrupt from ``module.name``, the image generator, once
    ``stop(calls)`` says so) and run again; checks that the stopped run left only its saved state and the continued
    one the whole run's seeds and images. Returns the generator's seed lists before and after the stop."""
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    assert main([*cmd, "--out", str(whole)]) == 0
    real, calls, stopping = getattr(module, name), [], [stop]

    def recording(pipe, prompt, seeds, **k):
        calls.append(list(seeds))
        if stopping[0] is not None and stopping[0](calls):
            raise KeyboardInterrupt
        return real(pipe, prompt, seeds, **k)

    monkeypatch.setattr(module, name, recording)
    assert main([*cmd, "--out", str(out)]) == 130
    assert (tmp_path / ".resumed.partial.npz").is_file() and not out.exists()
    before = list(calls)
    calls.clear()
    stopping[0] = None
    assert main([*cmd, "--out", str(out)]) == 0
    a, b = np.load(whole / "samples" / "samples.npz"), np.load(out / "samples" / "samples.npz")
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not (tmp_path / ".resumed.partial.npz").exists()
    return before, list(calls)


def test_sd_filter_interrupted_continues_from_its_saved_state(world, tmp_path, monkeypatch):
    import fairdiff.sampling.sd as sdmod

    cmd = ["debias", "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.25,0.75", "--n", "40", "--steps",
           "2", "--cfg-scale", "2.0", "--judge", str(world["judge"]), "--no-eval", "-q"]
    before, after = _stopped_and_continued(monkeypatch, sdmod, "generate_sd", cmd, tmp_path,
                                           lambda calls: len(calls) == 2)  # stopped on the second batch
    assert min(after[0]) == len(before[0])  # seeds 0.. of the first batch were not drawn again


def test_sd_guide_final_draw_interrupted_continues_from_its_saved_chunks(world, tmp_path, monkeypatch):
    """``guide --sd`` without ``--then-filter`` draws its final images in chunks of whole batches, each saved: a
    draw stopped in its second chunk continues there, and the images are those of one uninterrupted call."""
    import fairdiff.debias.sd as dsd
    import fairdiff.sampling.sd_guided as sg
    from fairdiff.debias.run import PILOT_SEED

    monkeypatch.setattr(dsd, "SD_DRAW_CHUNK", 16)
    cmd = ["debias", "--sd", str(world["sd"]), "--method", "guide", "--heads", str(world["heads"]), "--prompt",
           PROMPT, "--target", "0.4,0.6", "--n", "24", "--pilot-n", "16", "--max-pilots", "2", "--s0", "5",
           "--batch-size", "8", "--judge", str(world["judge"]), "--no-eval", "-q"]
    before, after = _stopped_and_continued(monkeypatch, sg, "sd_generate", cmd, tmp_path,
                                           lambda calls: min(calls[-1]) == 16)  # stopped in the second chunk
    assert [min(c) for c in before if min(c) < PILOT_SEED] == [0, 16]
    assert [min(c) for c in after if min(c) < PILOT_SEED] == [16]  # the first chunk was not drawn again
