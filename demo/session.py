"""One browser tab of `pocketswap app`: what the app serves (:class:`AppOptions`), the tab's switches
(:class:`LiveSettings`), its models, tracker and virtual camera (:class:`Session`), and the swaps of an
uploaded still or video through a session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.core.errors import PocketswapError
from pocketswap.core.imageio import decode_image
from pocketswap.demo.app import IdentityModels, draw_label, mask_view
from pocketswap.demo.pipeline import LiveSwapper
from pocketswap.demo.settings import LiveSettings

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
MAX_FRAME_PIXELS = 4096 * 4096  # a live frame or uploaded still larger than this is refused from its header
MAX_VIDEO_FRAMES = 18_000  # frames of one uploaded video (10 minutes at 30 FPS)
TRANSPORTS = ("websocket", "webrtc")  # the Live tab's streams; the page falls back to the WebSocket


@dataclass
class AppOptions:
    """What ``pocketswap app`` serves: a model (artifact or checkpoint) and its identities."""

    model: Path
    identity: Path | None = None
    threads: int = 1
    max_upload_mb: int = 200
    universal: Path | None = None  # the Personalize tab fine-tunes this universal run
    work_dir: Path = Path("runs/app")  # where the Personalize tab writes its runs
    personal_faces: str = "samples"  # attribute faces the Personalize tab trains against
    transport: str = "websocket"  # the Live tab's default stream: websocket (JPEG) | webrtc (aiortc)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise PocketswapError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not self.model.exists():
            raise PocketswapError(f"{self.model}: no such model (give an exported artifact or a run folder)")
        if self.max_upload_mb < 1:
            raise PocketswapError(f"max_upload_mb must be >= 1, got {self.max_upload_mb}")


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB frame from JPEG/PNG bytes (a clear error for anything else, a bomb refused from its header)."""
    return decode_image(data, "the frame", max_pixels=MAX_FRAME_PIXELS)


def encode_jpeg(frame: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise PocketswapError("could not encode the swapped frame")
    return data.tobytes()


VIRTUAL_CAMERA_DRIVERS = (
    "Linux: v4l2loopback (sudo modprobe v4l2loopback devices=1); macOS/Windows: OBS's virtual camera"
)


class VirtualCamera:
    """Swapped frames to a system virtual camera (pyvirtualcam) for video calls, opened at the first
    frame's size; a missing driver is one message naming it."""

    def __init__(self) -> None:
        self.camera = None

    def send(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.camera is not None and (self.camera.width, self.camera.height) != (w, h):
            self.close()
        if self.camera is None:
            try:
                import pyvirtualcam

                self.camera = pyvirtualcam.Camera(width=w, height=h, fps=30)
            except (ImportError, RuntimeError) as exc:
                raise PocketswapError(f"virtual camera unavailable ({exc}); install {VIRTUAL_CAMERA_DRIVERS}") from exc
            log.info("virtual camera %s (%dx%d)", self.camera.device, w, h)
        self.camera.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None


class Session:
    """One browser tab: its identity models, tracker and switches."""

    def __init__(self, options: AppOptions, identities: list[Path]) -> None:
        from pocketswap.faces.analyzer import FaceAnalyzer

        self.settings = LiveSettings()
        self.models = IdentityModels(options.model, identities, options.threads)
        self.swapper = LiveSwapper(
            self.models.current(), FaceAnalyzer(detector="auto", num_threads=options.threads), self.settings.pipeline
        )
        self.virtual_camera = VirtualCamera()

    def use_model(self, model: Path) -> None:
        """Serve another baked artifact (the Personalize tab's result) in this tab."""
        self.models = IdentityModels(model, [], self.models.threads)
        self.settings.identity = 0
        self.swapper.set_model(self.models.current())

    def configure(self, data: dict[str, Any]) -> None:
        settings = self.settings
        settings.update(data)
        if settings.identity != self.models.index:
            if self.models.is_checkpoint and settings.identity >= len(self.models.identities):
                raise PocketswapError(f"identity {settings.identity} is out of range")
            if self.models.is_checkpoint:
                self.models.index = settings.identity
                self.swapper.set_model(self.models.current())
        if not settings.virtual_camera:
            self.virtual_camera.close()

    def process(self, frame: np.ndarray, t: float | None = None) -> tuple[np.ndarray, dict[str, float], int]:
        """The frame as the page shows it, the per-stage milliseconds and the number of faces; ``t``: the
        frame's time in seconds for the landmark smoothing (default: the wall clock)."""
        result = self.swapper.process(frame, t)
        settings = self.settings
        out = result.frame
        if settings.view == "mask":
            out = mask_view(frame, result, self.swapper.model.size, self.swapper.model.template)
        elif settings.view == "split":
            half = frame.shape[1] // 2
            out = np.concatenate([frame[:, :half], result.frame[:, half:]], axis=1)
            cv2.line(out, (half, 0), (half, out.shape[0] - 1), (255, 255, 255), 2)
        if settings.label and settings.pipeline.swap and result.faces:
            out = draw_label(out)
        if settings.virtual_camera:
            try:
                self.virtual_camera.send(out)
            except PocketswapError:
                settings.virtual_camera = False  # said once; the page unticks it
                raise
        return out, result.timings_ms, len(result.faces)


def swap_image_bytes(session: Session, data: bytes) -> bytes:
    """Swap one uploaded still (PNG out, labelled); raises if it holds no face."""
    frame = decode_jpeg(data)
    out, _, faces = session.process(frame)
    if not faces:
        raise PocketswapError("no face found in this image")
    ok, png = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PocketswapError("could not encode the result")
    return png.tobytes()


def swap_video_file(
    session: Session,
    source: Path,
    output: Path,
    on_frame: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Swap every frame of a video into ``output`` (.mp4) at the source's frame rate; ``on_frame(done,
    total)`` after each frame (``total``: the video stream's frame count, 0 if unknown). ``name``: how
    errors call the video (an upload's name; the server's temporary files are never named)."""
    from pocketswap.demo.source import VideoSource
    from pocketswap.demo.video import VideoWriter

    name = name or str(source)
    video = VideoSource(source, name=name)
    frames = with_face = 0
    try:
        with VideoWriter(output, video.fps, audio_from=source, name=name) as writer:
            for frame in video:
                if frames >= MAX_VIDEO_FRAMES:
                    raise PocketswapError(f"{name} is longer than {MAX_VIDEO_FRAMES} frames")
                out, _, faces = session.process(frame, frames / video.fps)  # the file's clock: reproducible
                writer.write(out)
                frames += 1
                with_face += bool(faces)
                if on_frame is not None:
                    on_frame(frames, video.frame_count)
            audio = writer.audio_note
    finally:
        video.close()
    if frames == 0:
        raise PocketswapError(f"{name} has no frames")
    return {"frames": frames, "frames_with_face": with_face, "fps": video.fps} | ({"audio": audio} if audio else {})
