"""The HTML report: self-contained (images inlined), every section rendered, and it renders in Chromium."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from pocketswap.benchmarks.report import build_report, write_report
from pocketswap.cli import main
from pocketswap.core.errors import PocketswapError
from pocketswap.core.imageio import write_image
from pocketswap.faces import samples


@pytest.fixture
def results(tmp_path):
    latency = {
        "kind": "latency",
        "records": [
            {"artifact": f"/x/nano_{p}.tflite", "runtime": "litert-xnnpack", "precision": p, "preset": "nano",
             "threads": t, "median_ms": 1.0 / t * (1 if p == "fp32" else 0.8), "p5_ms": 0.9, "p95_ms": 1.2,
             "init_ms": 3.0, "size_mb": 0.4, "peak_memory_mb": 60.0, "fully_delegated": True}
            for p in ("fp32", "fp16") for t in (1, 2)
        ],
    }  # fmt: skip
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    steps = [{"step": s, "kind": "train", "total": 1.0 / (s + 1), "l1": 0.5 / (s + 1)} for s in range(0, 100, 10)]
    steps.append({"step": 100, "kind": "val", "loss": 0.2, "psnr_face": 21.5})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in steps))
    write_image(tmp_path / "swap.png", samples.load("astronaut")[:256, :256])
    return tmp_path


def test_report_is_self_contained_with_plots(results):
    page = build_report([results / "latency.json", results / "metrics.jsonl", results / "swap.png"])
    assert "<h2>Latency</h2>" in page and "<h2>Training</h2>" in page and "swap.png" in page
    assert not re.search(r'src="(?!data:)', page), "every image must be inlined"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4  # 2 latency plots, training curves, the swap image
    for encoded in images:
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "synthetic media" in page


def test_report_cli_and_bad_input(results, capsys, tmp_path):
    out = tmp_path / "r.html"
    assert main(["bench", "report", str(results / "latency.json"), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PocketswapError, match="result file .*broken.json: not valid JSON"):
        build_report([tmp_path / "broken.json"])
    assert main(["bench", "report", str(tmp_path / "missing.json"), "--out", str(out)]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    page = write_report(
        [results / "latency.json", results / "metrics.jsonl", results / "swap.png"], tmp_path / "r.html"
    )
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1600", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    import cv2

    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1600, 1100)
    assert np.std(image) > 20, "the screenshot is blank"
