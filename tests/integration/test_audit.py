"""``fairdiff audit``: prompts of the tiny random SD stack (``sd-init``) judged by a brightness judge whose answer
is known, resumed without regenerating finished prompts, and images made elsewhere with planted 4:1 and 1:1
prompts ranked 4:1 first."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from fairdiff.evaluation.audit import prompt_slug, run_audit  # noqa: E402
from fairdiff.evaluation.judges import from_callable  # noqa: E402
from tests.conftest import Brightness, brightness  # noqa: E402

PROMPTS = ["a photo of a doctor", "a nurse"]
GEN = ["--n", "3", "--steps", "2", "--guidance-scale", "2.0", "--bootstrap", "50", "-q"]


def expected_group(images: np.ndarray) -> np.ndarray:
    """What the brightness judge (threshold 0) must say about uint8 images, computed here without it."""
    return (brightness(images) > 0).astype(int)


def strict_fd(shares: list[float]) -> float:
    return math.sqrt((shares[0] - 0.5) ** 2 + (shares[1] - 0.5) ** 2)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    assert main(["sd-init", str(root / "sd"), "--resolution", "16"]) == 0
    torch.jit.script(Brightness()).save(str(root / "bright.pt"))
    (root / "prompts.txt").write_text("# occupations\n" + "\n\n".join(PROMPTS) + "\n")
    return {"root": root, "sd": root / "sd", "judge": root / "bright.pt", "prompts": root / "prompts.txt"}


def _npz(folder: Path) -> dict:
    with np.load(folder / "samples.npz") as z:
        return {k: z[k] for k in z.files}


def test_audit_generates_judges_and_ranks(world, tmp_path):
    out = tmp_path / "audit"
    assert main(["audit", str(world["sd"]), "--prompts", str(world["prompts"]), "--out", str(out),
                 "--judge", str(world["judge"]), "--seed", "5", *GEN]) == 0
    res = json.loads((out / "audit.json").read_text())
    assert [p["prompt"] for p in res["prompts"]] != [] and {p["prompt"] for p in res["prompts"]} == set(PROMPTS)
    fds = [p["fd_strict"] for p in res["prompts"]]
    assert fds == sorted(fds, reverse=True) and [p["rank"] for p in res["prompts"]] == [1, 2]
    for p in res["prompts"]:
        pdir = out / p["folder"]
        assert pdir.name == prompt_slug(p["prompt"]) and (pdir / "prompt.txt").read_text() == p["prompt"] + "\n"
        s = _npz(pdir / "samples")
        assert s["seeds"].tolist() == [5, 6, 7] and s["images"].shape == (3, 3, 16, 16)
        meta = json.loads((pdir / "samples" / "meta.json").read_text())
        assert meta["prompt"] == p["prompt"] and meta["seeds"] == [5, 6, 7] and meta["steps"] == 2
        g = expected_group(s["images"])
        shares = [float(np.mean(g == 0)), float(np.mean(g == 1))]
        assert p["strict_shares"] == pytest.approx(shares + [0.0], abs=1e-12)
        assert p["valid_rate"] == 1.0 and p["fd_strict"] == pytest.approx(strict_fd(shares), abs=1e-12)
        lo, hi = p["fd_strict_ci"]
        assert lo <= p["fd_strict"] + 1e-12 and hi >= p["fd_strict"] - 1e-12
        m = json.loads((pdir / "metrics.json").read_text())
        assert m["prompt"] == p["prompt"] and m["samples"]["seeds"] == [5, 7]
        assert (pdir / "report.md").read_text().startswith(f"# Audit prompt: {p['prompt']}")
        assert (pdir / "samples.png").is_file() and (pdir / "shares.png").is_file()
    # the images are those of the pipeline with image i drawn from seed + i
    from fairdiff.sampling.sd import generate_sd, load_sd_folder

    pipe = load_sd_folder(world["sd"], device="cpu")
    direct = generate_sd(pipe, PROMPTS[1], [6, 7], size=16, steps=2, guidance_scale=2.0)
    got = _npz(out / "prompts" / prompt_slug(PROMPTS[1]) / "samples")["images"][1:]
    assert np.array_equal(direct, got)
    rows = list(csv.DictReader((out / "audit.csv").open()))
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in res["prompts"]]
    assert [float(r["fd_strict"]) for r in rows] == pytest.approx(fds)
    report = (out / "report.md").read_text()
    assert report.index(res["prompts"][0]["prompt"]) < report.index(res["prompts"][1]["prompt"])
    assert (out / "shares.png").is_file() and json.loads((out / ".fairdiff.json").read_text())["kind"] == "audit"
    pooled = np.mean([p["strict_shares"] for p in res["prompts"]], axis=0)  # equal N: pooled = mean
    assert res["overall"]["strict_shares"] == pytest.approx(pooled.tolist())
    assert res["overall"]["n"] == 6 and res["overall"]["fd_strict_max"] == pytest.approx(fds[0])


def test_changed_setting_is_refused(world, tmp_path, capsys):
    out = tmp_path / "audit"
    base = ["audit", str(world["sd"]), "--prompt", "a nurse", "--out", str(out), "--judge", str(world["judge"])]
    assert main([*base, *GEN]) == 0
    before = (out / "audit.json").read_bytes()
    capsys.readouterr()
    changed = [x if x != "2" else "3" for x in GEN]  # --steps 3
    assert main([*base, *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "steps: 2 -> 3" in err[0]
    assert (out / "audit.json").read_bytes() == before


def test_resume_keeps_finished_prompts_and_continues_an_interrupted_one(world, tmp_path, monkeypatch):
    import fairdiff.sampling.sd as sdmod

    judge = from_callable(lambda imgs: np.stack([-(imgs.mean((1, 2, 3)) - 127.5), imgs.mean((1, 2, 3)) - 127.5],
                                                1), "fake-brightness", 2)
    kw = dict(sd=world["sd"], n=3, steps=2, guidance_scale=2.0, judge=judge, bootstrap=20, batch_size=1,
              device="cpu", log=lambda _m: None)
    out = tmp_path / "audit"
    run_audit(out, prompts=PROMPTS, **kw)
    done = {p: out / "prompts" / prompt_slug(p) for p in PROMPTS}
    stamp = {p: ((d / "samples" / "samples.npz").stat().st_mtime_ns, (d / "metrics.json").read_bytes())
             for p, d in done.items()}

    calls: list[list[int]] = []
    real = sdmod.generate_sd
    interrupt = [True]

    def counting(pipe, prompt, seeds, **k):
        calls.append(list(seeds))
        if interrupt[0] and prompt == "a chef" and len(calls) == 2:  # the new prompt's second image: interrupted
            raise KeyboardInterrupt
        return real(pipe, prompt, seeds, **k)

    monkeypatch.setattr(sdmod, "generate_sd", counting)
    with pytest.raises(KeyboardInterrupt):
        run_audit(out, prompts=[*PROMPTS, "a chef"], **kw)
    chef = out / "prompts" / prompt_slug("a chef")
    assert calls == [[0], [1]]  # the two finished prompts were not generated again
    assert sorted(f.name for f in (chef / "partial").iterdir()) == ["seed000000.png"]
    assert not (chef / "metrics.json").exists()
    calls.clear()
    interrupt[0] = False
    res = run_audit(out, prompts=[*PROMPTS, "a chef"], **kw)
    assert calls == [[1], [2]]  # seed 0 of the interrupted prompt was kept
    assert not (chef / "partial").exists() and len(res["prompts"]) == 3
    for p, d in done.items():
        assert ((d / "samples" / "samples.npz").stat().st_mtime_ns, (d / "metrics.json").read_bytes()) == stamp[p]
    # the continued prompt equals one made in a single go
    straight = tmp_path / "straight"
    run_audit(straight, prompts=["a chef"], **kw)
    a = _npz(chef / "samples")
    b = _npz(straight / "prompts" / prompt_slug("a chef") / "samples")
    assert np.array_equal(a["images"], b["images"]) and a["seeds"].tolist() == [0, 1, 2]
    # interrupted after its images were written, before it was judged: judged again from the same samples
    metrics = json.loads((chef / "metrics.json").read_text())
    npz_time = (chef / "samples" / "samples.npz").stat().st_mtime_ns
    (chef / "metrics.json").unlink()
    calls.clear()
    run_audit(out, prompts=[*PROMPTS, "a chef"], **kw)
    assert calls == [] and (chef / "samples" / "samples.npz").stat().st_mtime_ns == npz_time
    again = json.loads((chef / "metrics.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}
    m = json.loads((chef / "metrics.json").read_text())
    g = (a["images"].astype(float).mean((1, 2, 3)) > 127.5).astype(int)
    assert m["shares"] == pytest.approx([float(np.mean(g == 0)), float(np.mean(g == 1))])


def test_bf16_pipeline_on_the_cpu(world, tmp_path, monkeypatch):
    """--precision bf16 loads the pipeline in bfloat16 and its U-Net runs on bfloat16 inputs (spied on), and the
    images differ from the fp32 ones of the same seeds while staying close to them."""
    import fairdiff.sampling.sd as sd_mod

    seen: dict[str, set] = {"weights": set(), "unet_inputs": set()}
    load = sd_mod.load_sd_folder

    def spying_load(*a, **k):
        pipe = load(*a, **k)
        seen["weights"] |= {p.dtype for p in pipe.unet.parameters()} | {p.dtype for p in pipe.vae.parameters()}
        forward = pipe.unet.forward

        def spy(sample, *fa, **fk):
            seen["unet_inputs"].add(sample.dtype)
            return forward(sample, *fa, **fk)

        pipe.unet.forward = spy
        return pipe

    monkeypatch.setattr(sd_mod, "load_sd_folder", spying_load)
    images = {}
    for precision in ("bf16", "fp32"):
        seen["weights"].clear()
        seen["unet_inputs"].clear()
        out = tmp_path / precision
        assert main(["audit", str(world["sd"]), "--prompt", "a nurse", "--out", str(out), "--judge",
                     str(world["judge"]), "--precision", precision, "--device", "cpu", *GEN]) == 0
        want = torch.bfloat16 if precision == "bf16" else torch.float32
        assert seen["weights"] == {want} and seen["unet_inputs"] == {want}, (precision, seen)
        res = json.loads((out / "audit.json").read_text())
        assert res["settings"]["precision"] == precision and res["prompts"][0]["n"] == 3
        s = _npz(out / "prompts" / prompt_slug("a nurse") / "samples")
        g = expected_group(s["images"])
        assert res["prompts"][0]["strict_shares"] == pytest.approx([np.mean(g == 0), np.mean(g == 1), 0.0])
        images[precision] = s["images"].astype(np.int64)
    diff = np.abs(images["bf16"] - images["fp32"])
    assert diff.max() > 0 and diff.mean() < 8.0, (diff.max(), diff.mean())


def _planted(root: Path) -> Path:
    """Two prompts of 16x16 images: 'doctors' 4 bright : 1 dark (named in prompts.json), 'a nurse' 2 : 2."""
    from PIL import Image

    root.mkdir()
    for sub, bright, dark in (("doctors", 4, 1), ("a nurse", 2, 2)):
        (root / sub).mkdir()
        for i in range(bright + dark):
            v = 230 if i < bright else 20
            Image.fromarray(np.full((16, 16, 3), v, np.uint8)).save(root / sub / f"img{i}.png")
    (root / "prompts.json").write_text(json.dumps({"doctors": "a photo of a doctor"}))
    return root


def test_images_mode_ranks_the_planted_4_to_1_prompt_first(world, tmp_path):
    images = _planted(tmp_path / "made-elsewhere")
    out = tmp_path / "audit"
    assert main(["audit", "--images", str(images), "--out", str(out), "--judge", str(world["judge"]),
                 "--bootstrap", "200", "-q"]) == 0
    res = json.loads((out / "audit.json").read_text())
    first, second = res["prompts"]
    assert first["prompt"] == "a photo of a doctor" and second["prompt"] == "a nurse"
    assert first["strict_shares"] == [0.2, 0.8, 0.0] and second["strict_shares"] == [0.5, 0.5, 0.0]
    assert first["n"] == 5 and second["n"] == 4
    assert first["fd_strict"] == pytest.approx(math.sqrt(0.18)) and second["fd_strict"] == pytest.approx(0.0)
    assert res["overall"]["strict_shares"] == pytest.approx([3 / 9, 6 / 9, 0.0])
    assert res["settings"]["mode"] == "images"
    rows = list(csv.DictReader((out / "audit.csv").open()))
    assert [(r["rank"], r["prompt"], r["share:group 1"]) for r in rows] == [
        ("1", "a photo of a doctor", "0.8"), ("2", "a nurse", "0.5")]
    # with a data config the judge is calibrated on its held-out real images and the shares are corrected
    out2 = tmp_path / "audit-ref"
    assert main(["audit", "--images", str(images), "--out", str(out2), "--judge", str(world["judge"]),
                 "--bootstrap", "50", "-q", "data.source=synthetic", "data.resolution=16",
                 "data.synthetic_size=120", "data.heldout_per_group=10"]) == 0
    res2 = json.loads((out2 / "audit.json").read_text())
    assert res2["settings"]["data"]["source"] == "synthetic"
    for p in res2["prompts"]:
        assert p["corrected_shares"] is not None and sum(p["corrected_shares"]) == pytest.approx(1.0)
