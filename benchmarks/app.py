"""Latency of the browser path of ``pocketswap app``, measured in a real browser.

Debian's Chromium (headless, driven by Playwright) plays a 640x480 clip of a bundled face as its fake
camera; the page streams it to the app over one transport (the WebSocket with JPEG frames, or WebRTC)
and records, per swapped frame, the time from capture to display (``end_to_end``: the WebSocket
carries the capture time in a header, WebRTC in the frame's stamp band), the server's share and the
pipeline stages themselves. ``browser_path`` = end to end minus the in-process pipeline stages: what
the page, the codecs (JPEG, or VP8 both ways) and the transport add over swapping in-process.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import PocketswapError
from pocketswap.core.metrics import percentile

log = logging.getLogger(__name__)

WARMUP_FRAMES = 10


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download is not used)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise PocketswapError("chromium is not installed (Debian: apt-get install chromium)")
    return path


def fake_camera_args(clip: Path) -> list[str]:
    """Chromium flags that make ``clip`` (.y4m) the camera and grant camera access without a prompt."""
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
        "--no-sandbox",
    ]


def launch_chromium(playwright, clip: Path):
    """A headless Chromium whose camera plays ``clip``."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=fake_camera_args(clip))


@dataclass
class AppRecord:
    model: str
    transport: str
    frames: int
    seconds: float
    fps: float
    end_to_end_p50_ms: float
    end_to_end_p95_ms: float
    server_p50_ms: float
    pipeline_p50_ms: float
    pipeline_p95_ms: float
    browser_path_p50_ms: float
    browser_path_p95_ms: float
    frame: str = "640x480"

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.model} over {self.transport}: {self.fps:.1f} FPS over {self.frames} frames; "
            f"end to end p50 {self.end_to_end_p50_ms:.1f} ms (p95 {self.end_to_end_p95_ms:.1f}); in-process pipeline p50 {self.pipeline_p50_ms:.1f} ms; "
            f"browser path adds p50 {self.browser_path_p50_ms:.1f} ms (p95 {self.browser_path_p95_ms:.1f})"
        )


@contextmanager
def app_page(options) -> Iterator[tuple[Any, str]]:
    """A page of a headless Chromium whose camera plays the bundled-face clip (30 FPS), and the URL of the app
    serving ``options`` (an :class:`~pocketswap.demo.web.AppOptions`)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise PocketswapError("bench app needs Playwright: pip install 'pocketswap[dev]' (or playwright)") from exc
    from pocketswap.demo.clip import synthetic_frames, write_y4m
    from pocketswap.demo.web import create_app, serving_in_thread

    app = create_app(options)
    with tempfile.TemporaryDirectory(prefix="pocketswap-bench-app-") as tmp:
        clip = write_y4m(Path(tmp) / "clip.y4m", synthetic_frames("astronaut", frames=90, empty_every=0), fps=30)
        with serving_in_thread(app) as url, sync_playwright() as p:
            browser = launch_chromium(p, clip)
            try:
                yield browser.new_page(), url
            finally:
                browser.close()


def benchmark_app(
    model: Path, identity: Path | None = None, seconds: float = 20.0, threads: int = 1, transport: str = "websocket"
) -> AppRecord:
    """Serve the app for ``model``, stream the bundled-face clip through a real browser for ``seconds``
    over ``transport`` (websocket | webrtc; device: the page's device mode swaps on the browser itself)."""
    if transport == "device":
        return _benchmark_device(model, seconds)
    from pocketswap.demo.pipeline import STAGES
    from pocketswap.demo.web import AppOptions

    options = AppOptions(model=model, identity=identity, threads=threads, transport=transport)
    with app_page(options) as (page, url):
        page.goto(url)
        page.wait_for_function(f"document.getElementById('transport').value === '{transport}'")
        page.click("#camera")
        page.wait_for_function(f"window.pocketswap.state.log.length >= {WARMUP_FRAMES}", timeout=120_000)
        if page.evaluate("window.pocketswap.state.transport") != transport:
            raise PocketswapError(f"the page fell back from {transport}: {page.text_content('#live-error')}")
        start_count = page.evaluate("window.pocketswap.state.log.length")
        start = time.perf_counter()
        time.sleep(seconds)
        log_rows = page.evaluate("window.pocketswap.state.log")
        elapsed = time.perf_counter() - start
    rows = [r for r in log_rows[start_count:] if r["transport"] == transport]
    if not rows:
        raise PocketswapError("no swapped frames came back from the page")
    e2e = np.array([r["e2e"] for r in rows])
    server = np.array([r["server"] for r in rows])
    pipeline = np.array([sum(v for k, v in r["stages"].items() if k in STAGES) for r in rows])
    return AppRecord(
        model=str(model),
        transport=transport,
        frames=len(rows),
        seconds=round(elapsed, 2),
        fps=round(len(rows) / elapsed, 2),
        end_to_end_p50_ms=percentile(e2e, 50, 2),
        end_to_end_p95_ms=percentile(e2e, 95, 2),
        server_p50_ms=percentile(server, 50, 2),
        pipeline_p50_ms=percentile(pipeline, 50, 2),
        pipeline_p95_ms=percentile(pipeline, 95, 2),
        browser_path_p50_ms=percentile(e2e - pipeline, 50, 2),
        browser_path_p95_ms=percentile(e2e - pipeline, 95, 2),
    )


def _benchmark_device(model: Path, seconds: float) -> AppRecord:
    """Device mode (``/device``): the whole swap in the browser (WASM), frames per second of swapped frames.
    End to end is one frame's time on the page (canvas in, swap, canvas out); there is no server."""
    from pocketswap.demo.web import AppOptions

    with app_page(AppOptions(model=model)) as (page, url):
        page.goto(url + "/device")
        page.wait_for_function("document.getElementById('camera').disabled === false || "
                               "document.getElementById('status').className === 'error'", timeout=120_000)  # fmt: skip
        if page.get_attribute("#status", "class") == "error":
            raise PocketswapError(page.text_content("#status") or "device mode did not start")
        page.click("#camera")
        page.wait_for_function(f"window.pocketswapDevice.state.log.length >= {WARMUP_FRAMES}", timeout=120_000)
        start_count = page.evaluate("window.pocketswapDevice.state.frames")
        start = time.perf_counter()
        time.sleep(seconds)
        frames = page.evaluate("window.pocketswapDevice.state.frames") - start_count
        elapsed = time.perf_counter() - start
        log_rows = page.evaluate("window.pocketswapDevice.state.log")[-frames:]
    rows = [r for r in log_rows if r.get("face")]
    if not rows:
        raise PocketswapError("device mode swapped no face in the clip")
    frame = np.array([r["frame"] for r in rows])
    pipeline = np.array([sum(r.get(k, 0.0) for k in ("landmarks", "align", "swap", "paste")) for r in rows])
    return AppRecord(
        model=str(model), transport="device", frames=frames, seconds=round(elapsed, 2),
        fps=round(frames / elapsed, 2),
        end_to_end_p50_ms=percentile(frame, 50, 2),
        end_to_end_p95_ms=percentile(frame, 95, 2),
        server_p50_ms=0.0,
        pipeline_p50_ms=percentile(pipeline, 50, 2),
        pipeline_p95_ms=percentile(pipeline, 95, 2),
        browser_path_p50_ms=percentile(frame - pipeline, 50, 2),
        browser_path_p95_ms=percentile(frame - pipeline, 95, 2),
    )  # fmt: skip
