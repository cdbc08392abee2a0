"""The bench's self-contained HTML page: built from a bench folder, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fairdiff.bench.html import write_html_report


def _bench_folder(tmp_path):
    out = tmp_path / "bench"
    grid = out / "cells" / "0v1-4to1" / "baseline-s0" / "samples"
    grid.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(grid / "grid.png")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(out / "fd_vs_fid.png")
    (out / "results.csv").write_text("setting,method,n,fd_strict_mean,share_0_mean\n"
                                     "0v1-4to1,baseline,3,0.4123,0.79\n0v1-4to1,reweight,3,nan,0.52\n")
    (out / "runs.csv").write_text("setting,method,seed,fd_strict\n0v1-4to1,baseline,0,0.4123\n")
    return out


def test_page_holds_tables_plots_and_grids_inline(tmp_path):
    out = _bench_folder(tmp_path)
    page = write_html_report(out, "digits <bench>").read_text()
    assert "<title>digits &lt;bench&gt;</title>" in page  # escaped
    assert page.count("data:image/png;base64,") == 2  # the plot and one grid, embedded
    assert "src=\"http" not in page and "href=" not in page  # nothing fetched from outside
    assert re.search(r"<td>baseline</td><td>3</td><td>0.412</td><td>0.790</td>", page)
    assert "<td>&ndash;</td>" in page  # NaN shown as a dash
    assert "0v1-4to1/baseline-s0" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    out = _bench_folder(tmp_path)
    page = write_html_report(out, "digits bench")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert "<table>" in dom.stdout and "reweight" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (900, 1200)
    assert img.std() > 5  # not blank: text, table borders and images
    assert (img < 128).mean() > 0.001  # some dark pixels (text)
