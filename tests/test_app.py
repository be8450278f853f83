"""`pocketswap app` in a real browser: Debian's Chromium, headless, driven by Playwright, with a fake
camera playing a clip made of a bundled face. Checks that swapped frames come back over the WebSocket
and over WebRTC (the face region changes, the SYNTHETIC label shows), that switching identity changes the
output, that WebRTC falls back to the WebSocket, and that the Files tab swaps an image and a video. Screenshots land in the test's tmp folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from pocketswap.benchmarks.app import chromium_path, launch_chromium
from pocketswap.cli import main
from pocketswap.core.errors import PocketswapError
from pocketswap.core.imageio import write_image
from pocketswap.demo.clip import synthetic_frames, write_y4m
from pocketswap.demo.model_info import comparison
from pocketswap.demo.video import VideoWriter
from pocketswap.demo.web import AppOptions, create_app, serving_in_thread
from pocketswap.demo.web_live import HEADER
from pocketswap.faces import samples
from pocketswap.student import StudentNet, get_preset
from pocketswap.student.checkpoint import save_checkpoint

LABEL_BOX = (slice(420, 480), slice(0, 200))  # rows, columns of the SYNTHETIC label (bottom left)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free localhost port, for a random-weight nano checkpoint and two identities."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "nano", StudentNet(get_preset("nano")).eval())
    people = root / "people"
    people.mkdir()
    for name in ("grace_hopper", "camera"):
        write_image(people / f"{name}.png", samples.load(name))
    pool = root / "pool"  # attribute faces of the Personalize tab (a few, to stay fast)
    pool.mkdir()
    for name in ("astronaut", "lfw_00", "lfw_01", "lfw_02", "lfw_03", "lfw_04", "lfw_05", "lfw_06"):
        write_image(pool / f"{name}.png", samples.load(name))
    universal = save_checkpoint(root / "universal", StudentNet(get_preset("nano", size=64)), extra={"step": 0})
    options = AppOptions(model=checkpoint, identity=people, universal=universal, work_dir=root / "work",
                         personal_faces=str(pool))  # fmt: skip
    app = create_app(options)
    with serving_in_thread(app) as url:
        yield url, root, app.state.token


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    playwright_api = pytest.importorskip("playwright.sync_api")
    try:
        chromium_path()
    except PocketswapError as exc:
        pytest.skip(str(exc))
    first = next(synthetic_frames("astronaut", frames=1, empty_every=0))
    clip = write_y4m(tmp_path_factory.mktemp("clip") / "clip.y4m", [first] * 24)  # a still face, as a camera
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p, clip)
        yield browser
        browser.close()


def _canvas(page) -> np.ndarray:
    url = page.evaluate("document.getElementById('live-output').toDataURL('image/png')")
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int16)


def _next_frames(page, count: int = 4) -> np.ndarray:
    """The canvas once ``count`` more swapped frames have arrived (settings apply to the next frame)."""
    seen = int(page.evaluate("Number(document.getElementById('live-output').dataset.frames || 0)"))
    page.wait_for_function(
        f"Number(document.getElementById('live-output').dataset.frames || 0) >= {seen + count}", timeout=60_000
    )
    return _canvas(page)


def _live_page(browser, url: str, transport: str) -> tuple[Any, list[str]]:
    """The page with its camera started over ``transport``, and the page errors it raises."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_function("document.getElementById('identity').options.length == 2")
    page.select_option("#transport", transport)
    page.click("#camera")
    return page, errors


def test_live_swap_labels_and_switches_identity(server, browser, tmp_path):
    url, _, token = server
    page, errors = _live_page(browser, url, "websocket")
    swapped = _next_frames(page)
    page.screenshot(path=str(tmp_path / "live.png"))
    assert page.evaluate("document.getElementById('live-output').dataset.faces") == "1"

    page.uncheck("#swap")
    original = _next_frames(page)
    changed = np.abs(swapped - original).max(axis=-1) > 40
    assert changed[LABEL_BOX].mean() > 0.02, "the SYNTHETIC label is not visible on swapped frames"
    face = changed.copy()
    face[LABEL_BOX] = False
    rows, cols = np.nonzero(face)
    assert face.mean() > 0.01, "the face region did not change"
    assert 120 < rows.mean() < 360 and 200 < cols.mean() < 440, "changes are not on the (centred) face"

    page.check("#swap")
    page.select_option("#identity", "1")
    other = _next_frames(page)
    face_box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert np.abs(other - swapped)[face_box].mean() > 2.0, "switching identity did not change the swap"
    assert np.abs(other - swapped)[:100].mean() < 2.0, "switching identity changed the background"

    page.select_option("#view", "split")
    split = _next_frames(page)
    assert np.abs(split - original)[:, :300].mean() < 2.0  # left half: the camera frame as it came
    assert not errors, errors


def test_live_swap_over_webrtc_measures_capture_to_display(server, browser, tmp_path):
    url, _, token = server
    page, errors = _live_page(browser, url, "webrtc")
    swapped = _next_frames(page, 45)  # 1.5 s: Chrome's encoder starts below 640x480 while its bandwidth ramps up
    page.screenshot(path=str(tmp_path / "live-webrtc.png"))
    assert page.evaluate("window.pocketswap.state.transport") == "webrtc", page.text_content("#live-error")
    assert page.text_content("#live-error") == ""
    # the page reads its clock off the returned frames and matches the server's timings by it
    page.wait_for_function(
        "window.pocketswap.state.log.filter((r) => r.transport === 'webrtc').length >= 3", timeout=30_000
    )
    rows = page.evaluate("window.pocketswap.state.log.filter((r) => r.transport === 'webrtc')")
    assert rows and all(0 < r["e2e"] < 5000 and "swap" in r["stages"] for r in rows)

    page.uncheck("#swap")
    original = _next_frames(page, 6)
    camera = cv2.resize(next(synthetic_frames("astronaut", frames=1, empty_every=0)), (640, 480)).astype(np.int16)
    assert np.abs(original - camera)[400:, 220:].mean() < 8, "the stamp band (or something else) shows in the view"
    changed = np.abs(swapped - original).max(axis=-1) > 40
    assert changed[LABEL_BOX].mean() > 0.02, "the SYNTHETIC label is not visible on swapped frames"
    face = changed.copy()
    face[LABEL_BOX] = False
    rows_, cols = np.nonzero(face)
    assert face.mean() > 0.01 and 120 < rows_.mean() < 360 and 200 < cols.mean() < 440

    page.check("#swap")
    page.select_option("#identity", "1")
    other = _next_frames(page, 6)
    face_box = (slice(rows_.min(), rows_.max() + 1), slice(cols.min(), cols.max() + 1))
    assert np.abs(other - swapped)[face_box].mean() > 2.0, "switching identity did not change the swap"
    assert not errors, errors


def test_webrtc_that_cannot_connect_falls_back_to_the_websocket(server, browser):
    url, _, token = server
    page = browser.new_page()
    page.route("**/api/webrtc/offer", lambda route: route.fulfill(
        status=422, content_type="application/json", body=json.dumps({"error": "refused for the test"})))  # fmt: skip
    page.goto(url)
    page.select_option("#transport", "webrtc")
    page.click("#camera")
    _next_frames(page, 3)
    assert page.evaluate("window.pocketswap.state.transport") == "websocket"
    assert page.input_value("#transport") == "websocket"
    assert "WebRTC unavailable (refused for the test)" in page.text_content("#live-error")


def test_webrtc_offer_errors_are_one_clear_message(server):
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    url, _, token = server

    def post(body: bytes) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", "X-Pocketswap-Token": token}
        request = Request(f"{url}/api/webrtc/offer", data=body, headers=headers)
        try:
            with urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, reply = post(b"not json")
    assert status == 400 and "the offer is not valid JSON" in reply["error"]
    status, reply = post(json.dumps({"sdp": "v=0", "type": "answer"}).encode())
    assert status == 422 and "must be" in reply["error"]
    status, reply = post(json.dumps({"sdp": "nonsense", "type": "offer"}).encode())
    assert status == 422 and "could not be answered" in reply["error"]


def test_personalize_tab_trains_exports_and_switches_the_live_model(server, browser, tmp_path):
    url, root, token = server
    page = browser.new_page()
    page.goto(url)
    page.click("#camera")
    _next_frames(page, 2)
    page.click("nav button[data-tab=personalize]")
    page.fill("#personal-steps", "2")
    page.fill("#personal-pairs", "16")
    page.click("#personal-run")
    page.wait_for_function("['done', 'failed'].includes(document.getElementById('personal-status').dataset.state)",
                           timeout=300_000)  # fmt: skip
    status = page.text_content("#personal-status")
    assert status.startswith("done"), status
    artifact = next((root / "work" / "jobs").glob("*-grace_hopper-*/run/artifacts/*.onnx"))
    assert str(artifact) in status
    page.screenshot(path=str(tmp_path / "personalize.png"), full_page=True)
    page.click("#personal-use")
    assert page.evaluate("document.querySelector('nav button[data-tab=live]').getAttribute('aria-selected')") == "true"
    _next_frames(page, 3)  # the 64 px personalised model now swaps the live frames
    assert page.text_content("#live-error") == ""
    assert page.evaluate("document.getElementById('live-output').dataset.faces") == "1"
    assert str(artifact) in page.text_content("#model-name")  # the header names the model now live
    assert "now swaps with" in page.text_content("#personal-done")
    page.click("nav button[data-tab=compare]")  # the app's own personalisation, without a restart
    page.wait_for_function("document.getElementById('compare-hint').textContent.includes('held-out swaps')")
    assert str(artifact.parents[1]) in page.text_content("#compare-hint")

    page.click("nav button[data-tab=personalize]")
    page.fill("#personal-sample", "sample:/../..")  # not a bundled sample: refused, nothing written
    page.click("#personal-run")
    page.wait_for_function("document.getElementById('personal-error').textContent.length > 0")
    assert "unknown sample" in page.text_content("#personal-error")


def test_compare_tab_says_how_to_get_a_comparison(server, browser):
    url, _, token = server
    page = browser.new_page()
    page.route("**/api/compare", lambda route: route.fulfill(  # as served before any personalisation
        content_type="application/json", body=json.dumps(comparison(None))))  # fmt: skip
    page.goto(url)
    page.click("nav button[data-tab=compare]")
    page.wait_for_function("document.getElementById('compare-hint').textContent.length > 0")
    assert "pocketswap distill personalize" in page.text_content("#compare-hint")
    assert page.evaluate("document.getElementById('compare-image').hidden")


def test_files_tab_swaps_an_image_and_names_a_faceless_one(server, browser, tmp_path):
    url, root, token = server
    page = browser.new_page()
    page.goto(url)
    page.click("nav button[data-tab=files]")
    photo = write_image(root / "astronaut.png", samples.load("astronaut"))
    page.set_input_files("#file-input", str(photo))
    page.click("#file-run")
    page.wait_for_function("document.getElementById('file-output')?.naturalWidth > 0", timeout=60_000)
    assert page.evaluate("document.getElementById('file-output').naturalWidth") == samples.load("astronaut").shape[1]
    page.screenshot(path=str(tmp_path / "files.png"), full_page=True)

    blank = write_image(root / "blank.png", np.full((200, 200, 3), 128, np.uint8))
    page.set_input_files("#file-input", str(blank))
    page.click("#file-run")
    page.wait_for_function("document.getElementById('file-error').textContent.length > 0", timeout=60_000)
    assert "no face" in page.text_content("#file-error")


def test_files_tab_swaps_a_video_with_progress(server, browser):
    url, root, token = server
    clip = root / "clip.mp4"
    with VideoWriter(clip, 10.0, notice=None) as writer:
        for frame in synthetic_frames("astronaut", frames=12, empty_every=0):
            writer.write(frame)
    page = browser.new_page()
    page.goto(url)
    page.click("nav button[data-tab=files]")
    page.set_input_files("#file-input", str(clip))
    page.click("#file-run")
    page.wait_for_function("document.querySelector('#file-result video')?.readyState > 0", timeout=60_000)
    assert page.text_content("#file-error") == ""
    job = page.get_attribute("#file-progress", "data-job")
    progress = page.request.get(f"{url}/api/files/progress?job={job}&token={token}").json()
    assert progress == {"frames": 12, "total": 12, "done": True}
    assert page.request.get(f"{url}/api/files/progress?job=nobody&token={token}").status == 404


def test_bad_settings_and_models_are_one_clear_error(tmp_path):
    with pytest.raises(PocketswapError, match="no such model"):
        AppOptions(model=tmp_path / "missing.tflite")
    from pocketswap.demo.settings import LiveSettings

    settings = LiveSettings()
    with pytest.raises(PocketswapError, match="'view' must be one of"):
        settings.update({"view": "sideways"})
    with pytest.raises(PocketswapError, match=r"'detect_every' must be in \[1, "):
        settings.update({"detect_every": 0})
    settings.update({"swap": False, "unknown": 1})
    assert settings.pipeline.swap is False
    from pocketswap.demo.settings import LIVE_SWITCHES, PipelineConfig, settings_schema

    schema = {entry["name"]: entry for entry in settings_schema()}  # what the page builds its switches from
    assert set(LIVE_SWITCHES) <= set(schema) and schema["view"]["choices"] == ["swap", "split", "mask"]
    assert all(schema[name]["default"] == getattr(PipelineConfig(), name) for name in LIVE_SWITCHES)
    with pytest.raises(PocketswapError, match="'detect_every' must be in"):
        settings.update({"detect_every": schema["detect_every"]["max"] + 1})


def test_personalize_without_a_universal_run_is_said_before_the_click(tmp_path, browser):
    checkpoint = save_checkpoint(tmp_path / "nano", StudentNet(get_preset("nano")).eval())
    app = create_app(AppOptions(model=checkpoint, identity=Path("sample:grace_hopper"), universal=None))
    assert "--universal" in app.state.info["personalize_hint"]
    with serving_in_thread(app) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('personal-error').textContent.length > 0")
        assert page.is_disabled("#personal-run")
        assert "--universal RUN_DIR" in page.text_content("#personal-error")


def test_a_bad_frame_is_reported_and_the_session_goes_on(server):
    from websockets.sync.client import connect

    url, _, token = server
    frame = next(synthetic_frames("astronaut", frames=1, empty_every=0))
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert ok
    with connect(url.replace("http", "ws") + f"/ws/live?token={token}", max_size=None) as ws:
        ws.send(HEADER.pack(0.0) + b"not a jpeg at all")
        assert "the frame: not an image or corrupt" in json.loads(ws.recv(timeout=60))["error"]
        ws.send('{"view": "sideways"}')
        assert "'view' must be one of" in json.loads(ws.recv(timeout=60))["error"]
        ws.send('{"virtual_camera": true}')
        assert json.loads(ws.recv(timeout=60))["settings"]["virtual_camera"] is True
        ws.send(HEADER.pack(0.5) + jpeg.tobytes())
        reply = json.loads(ws.recv(timeout=60))
        if "error" in reply:  # no loopback driver here: named, and the stream goes on without it
            assert "virtual camera unavailable" in reply["error"] and "v4l2loopback" in reply["error"]
        else:
            ws.recv(timeout=60)
            ws.send('{"virtual_camera": false}')
            ws.recv(timeout=60)
        ws.send(HEADER.pack(1.0) + jpeg.tobytes())
        stats = json.loads(ws.recv(timeout=60))["stats"]
        assert stats["faces"] == 1 and stats["sent_ms"] == 1.0
        swapped = cv2.imdecode(np.frombuffer(ws.recv(timeout=60), np.uint8), cv2.IMREAD_COLOR)
        assert swapped.shape == frame.shape


def test_app_command_names_a_missing_model(tmp_path, capsys):
    assert main(["app", "--model", str(tmp_path / "missing.tflite")]) == 2
    assert "no such model" in capsys.readouterr().err


def test_artifact_picker_lists_the_exports_and_switches_the_tab_model(tmp_path):
    """Served from an artifact, the Live tab lists its sibling exports (with parity and size from their
    manifests), switches a tab's model to the one picked, and refuses one that cannot run here."""
    from pocketswap.demo.model_info import artifact_choices, model_manifest
    from pocketswap.demo.personal_job import PersonalizeJob
    from pocketswap.demo.session import Session
    from pocketswap.demo.web_live import configure_session

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "nano", StudentNet(get_preset("nano")).eval())
    out = tmp_path / "artifacts"
    command = ["export", str(checkpoint), "--identity", "sample:grace_hopper", "--format", "onnx", "--out", str(out)]
    assert main([*command, "--precision", "fp32,fp16"]) == 0
    served = next(out.glob("*_fp32.onnx"))
    choices = artifact_choices(served, model_manifest(served))
    assert [c.precision for c in choices] == ["fp32", "fp16"] and choices[0].path == str(served)
    assert all(c.parity.startswith("passed") and c.size_bytes > 0 and not c.unavailable for c in choices)

    session = Session(AppOptions(model=served), [])
    job = PersonalizeJob(None)
    configure_session(session, json.dumps({"artifact": 1}), job, choices)
    assert str(session.models.model_path) == choices[1].path
    frame = next(synthetic_frames("astronaut", frames=1, empty_every=0))
    assert session.process(frame)[2] == 1  # the fp16 export swaps the face
    with pytest.raises(PocketswapError, match="out of range"):
        configure_session(session, json.dumps({"artifact": 5}), job, choices)
    (out / "nano_baked_fp32.mlpackage").mkdir()  # a CoreML export beside them: listed, not runnable here
    (out / "nano_baked_fp32.mlpackage.json").write_text(
        json.dumps(model_manifest(served).to_dict() | {"runtime": "coreml", "artifact": "nano_baked_fp32.mlpackage"})
    )
    coreml = [c for c in artifact_choices(served, model_manifest(served)) if c.runtime == "coreml"]
    if coreml[0].unavailable:  # on Linux
        with pytest.raises(PocketswapError, match="macOS"):
            configure_session(session, json.dumps({"artifact": 1}), job, [choices[0], coreml[0]])


def test_personalize_against_uploaded_photos_and_a_video(tmp_path):
    """The Personalize tab's optional faces: photos as they are, a video as frames spread over it."""
    from pocketswap.demo.personal_job import faces_from_uploads

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 10.0, notice=None) as writer:
        for frame in synthetic_frames("astronaut", frames=12, empty_every=0):
            writer.write(frame)
    photo = write_image(tmp_path / "lfw.png", samples.load("lfw_00"))
    folder = tmp_path / "faces"
    uploads = [("me.mp4", clip.read_bytes()), ("friend.png", photo.read_bytes())]
    assert faces_from_uploads(uploads, folder) == 13
    assert faces_from_uploads(uploads[1:], tmp_path / "other") == 1 and len(list((tmp_path / "other").iterdir())) == 1
    with pytest.raises(PocketswapError, match="no photo or video frame"):
        faces_from_uploads([], tmp_path / "none")
    bomb = tmp_path / "bomb.png"  # 20000 x 20000 declared in its header: refused before decoding
    cv2.imwrite(str(bomb), np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    with pytest.raises(PocketswapError, match="over the 50 MP limit"):
        faces_from_uploads([("bomb.png", bomb.read_bytes())], tmp_path / "bombed")


def test_personalize_refuses_faces_that_are_not_photos_or_videos(server, browser):
    url, _, token = server
    page = browser.new_page()
    reply = page.request.post(f"{url}/api/personalize", headers={"X-Pocketswap-Token": token}, multipart={
        "sample": "sample:grace_hopper", "steps": "2", "pairs": "16",
        "faces": {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a face"}})  # fmt: skip
    assert reply.status == 422 and "must be photos or videos, not notes.txt" in reply.json()["error"]
