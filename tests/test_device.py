"""The app's device mode in a real browser (Debian's Chromium, headless, Playwright): the page runs the swap
itself from the model's ONNX export and manifest (LiteRT.js landmarks, ONNX Runtime Web, a WebGL mesh draw)
and matches the Python pipeline on still photos; with the fake camera it swaps a live stream."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from pocketswap.benchmarks.app import chromium_path, launch_chromium
from pocketswap.benchmarks.quality_gate import REFERENCE_STUDENT
from pocketswap.core.errors import PocketswapError
from pocketswap.demo.clip import synthetic_frames, write_y4m
from pocketswap.demo.on_device import NODE_MODULES
from pocketswap.demo.pipeline import LiveSwapper
from pocketswap.demo.settings import PipelineConfig
from pocketswap.demo.swap_model import load_swap_model
from pocketswap.demo.web import AppOptions, create_app, serving_in_thread
from pocketswap.export.pipeline import export_model
from pocketswap.faces import samples
from pocketswap.faces.analyzer import FaceAnalyzer
from pocketswap.student import StudentNet, get_preset
from pocketswap.student.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The frozen reference student (it reads the warped identity), exported to ONNX for one identity."""
    (exported,) = export_model(REFERENCE_STUDENT, tmp_path_factory.mktemp("device"), identity="sample:grace_hopper",
                               formats="onnx")  # fmt: skip
    return exported.path


@pytest.fixture(scope="module")
def page(artifact, tmp_path_factory):
    playwright_api = pytest.importorskip("playwright.sync_api")
    try:
        chromium_path()
    except PocketswapError as exc:
        pytest.skip(str(exc))
    if not NODE_MODULES.is_dir():
        pytest.skip("the browser runtimes are not installed (make installs them: npm ci --prefix demo/device)")
    first = next(synthetic_frames("astronaut", frames=1, empty_every=0))
    clip = write_y4m(tmp_path_factory.mktemp("clip") / "clip.y4m", [first] * 24)  # a still face, as a camera
    app = create_app(AppOptions(model=artifact))
    errors: list[str] = []
    with serving_in_thread(app) as url, playwright_api.sync_playwright() as p:
        browser = launch_chromium(p, clip)
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/device")
        page.wait_for_function("!document.getElementById('camera').disabled", timeout=120_000)
        yield page
        assert not errors, errors
        browser.close()


def _still(page, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    url = "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()
    result = page.evaluate("(url) => window.pocketswapDevice.swapStill(url)", url)
    assert result["landmarks"] is not None, "device mode found no face"
    out = np.array(result["rgba"], np.uint8).reshape(result["height"], result["width"], 4)[..., :3]
    return out, np.array(result["landmarks"]).reshape(468, 3)


@pytest.mark.parametrize("name", ["astronaut", "lfw_01"])  # a face larger than the crop; a smaller one
def test_device_mode_swaps_a_still_as_the_python_pipeline_does(page, artifact, name):
    frame = samples.load(name)
    analyzer = FaceAnalyzer(detector="auto")
    face = analyzer.detect_one(frame)
    demo = LiveSwapper(load_swap_model(artifact), analyzer, PipelineConfig(detect_every=1)).process(frame).frame
    device, landmarks = _still(page, frame)
    assert np.abs(landmarks[:, :2] - face.landmarks[:, :2]).max() < 0.5  # LiteRT.js: the same front end
    x0, y0, x1, y1 = np.round(face.box).astype(int)
    inside = np.abs(device[y0:y1, x0:x1].astype(np.float64) - demo[y0:y1, x0:x1]).mean()
    changed = np.abs(demo[y0:y1, x0:x1].astype(np.float64) - frame[y0:y1, x0:x1]).mean()
    assert changed > 5.0, changed  # the swap changed the face ...
    assert inside < 2.5, inside  # ... and the browser made the same change (measured 1.0-1.5)
    assert np.abs(device.astype(np.float64) - demo).mean() < 0.5  # and nothing else


def test_device_mode_swaps_the_camera_and_stops(page):
    page.click("#camera")
    page.wait_for_function("window.pocketswapDevice.state.log.filter((r) => r.face).length >= 5", timeout=60_000)
    assert page.text_content("#camera") == "Stop camera"
    assert "FPS" in page.text_content("#stats")
    shot = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    swapped = cv2.imdecode(np.frombuffer(base64.b64decode(shot.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    camera = cv2.cvtColor(next(synthetic_frames("astronaut", frames=1, empty_every=0)), cv2.COLOR_RGB2BGR)
    assert swapped.shape == camera.shape and np.abs(swapped.astype(int) - camera).mean() > 0.5
    page.click("#camera")
    assert page.text_content("#camera") == "Start camera"


def test_device_mode_of_a_checkpoint_says_what_to_export(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "nano", StudentNet(get_preset("nano")).eval())
    app = create_app(AppOptions(model=checkpoint, identity=Path("sample:grace_hopper")))
    with serving_in_thread(app) as url:
        request = urllib.request.Request(f"{url}/api/device/manifest", headers={"X-Pocketswap-Token": app.state.token})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 404
        assert "--format onnx" in json.loads(refused.value.read())["error"]
        with urllib.request.urlopen(f"{url}/device") as page:  # the page says so itself, with no script to fail
            text = page.read().decode()
        assert "Device mode cannot start" in text and "--format onnx" in text and "main.js" not in text
        for path in ("/device/lib/../../../setup.cfg", "/device/js/..%2F..%2Fsetup.cfg", "/device/models/x.tflite"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"{url}{path}")
            assert missing.value.code == 404, path
