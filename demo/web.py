"""`pocketswap app`: the live swap and file swaps in a browser page, served on localhost.

One Starlette app: ``GET /`` is the page (``demo/page.html``: Live, Files, Personalize, Compare and
Model tabs). The live stream is a WebSocket (``/ws/live``) carrying JPEG frames from the browser's
camera and swapped JPEG frames back, one in flight at a time, so a slow frame delays the next instead
of queueing; or WebRTC (``POST /api/webrtc/offer``, :mod:`pocketswap.demo.webrtc`), chosen in the page;
``POST /api/files`` swaps an uploaded image or video; ``/api/personalize`` runs one background
personalisation (:mod:`pocketswap.demo.personal_job`); ``GET /api/compare`` and ``/api/model`` describe
the model, its identities and the personalisation behind it. Each browser tab (each WebSocket or
peer connection) owns its models and tracking state, so two tabs never share an identity by
accident. A frame that fails to decode or swap is reported to its tab and skipped; the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.demo.app import IdentityModels, draw_label, identity_files, mask_view
from pocketswap.demo.guard import AccessPolicy, Guard, is_loopback, parse_json, whole_number
from pocketswap.demo.model_info import (
    ArtifactChoice,
    artifact_choices,
    comparison,
    comparison_run,
    describe_model,
    model_manifest,
)
from pocketswap.demo.personal_job import (
    PersonalizeJob,
)
from pocketswap.demo.pipeline import STAGES, LiveSwapper, PipelineConfig
from pocketswap.errors import PocketswapError
from pocketswap.imageio import decode_image

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
JPEG_QUALITY = 85
MAX_FRAME_PIXELS = 4096 * 4096  # a live frame or uploaded still larger than this is refused from its header
MAX_VIDEO_FRAMES = 18_000  # frames of one uploaded video (10 minutes at 30 FPS)
MAX_SETTINGS_BYTES = 16 * 1024  # one settings message of the Live tab
MAX_OFFER_BYTES = 256 * 1024  # one WebRTC offer (an SDP is a few kB)
MAX_DETECT_EVERY = 300
PAGE_TOKEN = "__POCKETSWAP_TOKEN__"  # replaced in the served page by the launch's token
VIEWS = ("swap", "split", "mask")  # swapped frame, before | after, mask overlay
HEADER = struct.Struct("<d")  # each live frame starts with the client's capture time (ms, float64)
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


@dataclass
class LiveSettings:
    """Per-tab switches sent by the page as JSON; unknown keys are ignored, bad values refused."""

    swap: bool = True
    view: str = "swap"  # swap | split (before/after) | mask
    label: bool = True
    color_transfer: bool = True
    all_faces: bool = False
    detect_every: int = 5
    identity: int = 0
    virtual_camera: bool = False

    def update(self, data: dict[str, Any]) -> None:
        """Apply the known keys of ``data``, all checked before any is applied (a bad one names itself)."""
        changes: dict[str, Any] = {}
        for key in ("swap", "label", "color_transfer", "all_faces", "virtual_camera"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise PocketswapError(f"{key} must be true or false, got {data[key]!r:.40}")
                changes[key] = data[key]
        if "view" in data:
            if data["view"] not in VIEWS:
                raise PocketswapError(f"view must be one of {', '.join(VIEWS)}, got {data['view']!r:.40}")
            changes["view"] = data["view"]
        for key, low, high in (("detect_every", 1, MAX_DETECT_EVERY), ("identity", 0, 10_000)):
            if key in data:
                changes[key] = whole_number(data[key], key, low, high)
        for key, value in changes.items():
            setattr(self, key, value)


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
            self.models.current(), FaceAnalyzer(detector="auto", num_threads=options.threads), PipelineConfig()
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
        config = self.swapper.config
        config.swap, config.color_transfer = settings.swap, settings.color_transfer
        config.all_faces, config.detect_every = settings.all_faces, settings.detect_every
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
        if settings.label and settings.swap and result.faces:
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
    session: Session, source: Path, output: Path, on_frame: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Swap every frame of a video into ``output`` (.mp4) at the source's frame rate; ``on_frame(done,
    total)`` after each frame (``total``: the container's frame count, 0 if unknown)."""
    from pocketswap.demo.source import VideoSource
    from pocketswap.demo.video import VideoWriter

    video = VideoSource(source)
    frames = with_face = 0
    try:
        with VideoWriter(output, video.fps, audio_from=source) as writer:
            for frame in video:
                if frames >= MAX_VIDEO_FRAMES:
                    raise PocketswapError(f"the video is longer than {MAX_VIDEO_FRAMES} frames")
                out, _, faces = session.process(frame, frames / video.fps)  # the file's clock: reproducible
                writer.write(out)
                frames += 1
                with_face += bool(faces)
                if on_frame is not None:
                    on_frame(frames, video.frame_count)
    finally:
        video.close()
    if frames == 0:
        raise PocketswapError("the video has no frames")
    return {"frames": frames, "frames_with_face": with_face, "fps": video.fps}


def create_app(options: AppOptions, policy: AccessPolicy | None = None):
    """The Starlette application behind its :class:`~pocketswap.demo.guard.Guard` (``app.state.token``:
    the launch's token, which the served page carries). Import-light: Starlette is imported here."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from pocketswap.demo.on_device import device_routes
    from pocketswap.demo.web_jobs import files_routes, personalize_routes
    from pocketswap.demo.webrtc import STAMP_BITS, STAMP_COLUMNS, STAMP_MARK, WebRTCPeers

    policy = policy or AccessPolicy()
    policy.max_body_bytes = options.max_upload_mb * 1024 * 1024
    policy.body_limits.setdefault("/api/webrtc/offer", MAX_OFFER_BYTES)
    identities = identity_files(options.identity)
    manifest = model_manifest(options.model)
    info = describe_model(options.model, identities, manifest)
    artifacts = artifact_choices(options.model, manifest)
    info["artifacts"] = [a.to_dict() for a in artifacts]
    info["transport"] = {"default": options.transport, "stamp": {"columns": STAMP_COLUMNS, "bits": STAMP_BITS,
                                                                 "mark": STAMP_MARK}}  # fmt: skip
    Session(options, identities)  # load once up front: a bad model or identity fails at start, not in a tab
    page_html = PAGE.read_text().replace(PAGE_TOKEN, policy.token)

    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def model(_: Request) -> JSONResponse:
        return JSONResponse(info)

    served_comparison = comparison_run(options.model, manifest)
    job = PersonalizeJob(options.universal, options.work_dir)
    try:
        job.check_can_start()
    except PocketswapError as exc:  # the page says so before anyone clicks
        info["personalize_hint"] = str(exc)

    def compared() -> Path | None:  # this app's own newest personalisation, else the served model's
        own = job.artifact
        return (comparison_run(own, model_manifest(own)) if own is not None else None) or served_comparison

    async def compare(_: Request) -> JSONResponse:
        return JSONResponse(comparison(compared()))

    async def compare_image(_: Request) -> Response:
        run = compared()
        if run is None:
            return JSONResponse({"error": "no personalisation run behind this model"}, status_code=404)
        return Response((run / "compare.png").read_bytes(), media_type="image/png")

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            session = await asyncio.to_thread(Session, options, identities)
        except PocketswapError as exc:
            await websocket.send_text(json.dumps({"error": str(exc)}))
            await websocket.close()
            return
        try:
            while True:
                message = await websocket.receive()
                if message.get("type") == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await _reply(websocket, partial(_configure, job=job, artifacts=artifacts), session, message["text"])
                elif message.get("bytes") is not None:
                    await _reply(websocket, _frame, session, message["bytes"])
        except WebSocketDisconnect:
            pass
        finally:
            session.virtual_camera.close()

    peers = WebRTCPeers(partial(Session, options, identities), partial(_configure, job=job, artifacts=artifacts))

    async def webrtc_offer(request: Request) -> JSONResponse:
        try:
            offer = parse_json(await request.body(), "the offer", MAX_OFFER_BYTES)
        except PocketswapError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            return JSONResponse(await peers.answer(offer))
        except PocketswapError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await peers.close_all()
        await asyncio.to_thread(job.shutdown)  # a running personalisation keeps its checkpoint

    async def _reply(websocket, handler, session: Session, payload) -> None:
        try:
            for item in await asyncio.to_thread(handler, session, payload):
                await (websocket.send_bytes(item) if isinstance(item, bytes) else websocket.send_text(item))
        except (PocketswapError, ValueError, TypeError, OverflowError) as exc:
            log.info("live frame skipped: %s", exc)
            await websocket.send_text(json.dumps({"error": str(exc)}))

    async def client_left(_: Request, __: Exception) -> Response:
        return Response(status_code=400)  # nobody reads it: the client has gone

    async def http_error(_: Request, exc: HTTPException) -> Response:  # e.g. Starlette's "Invalid multipart data."
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    routes = [
        Route("/", page),
        Route("/api/model", model),
        Route("/api/compare", compare),
        *personalize_routes(job, options.personal_faces),
        Route("/api/compare.png", compare_image),
        *files_routes(partial(Session, options, identities), _attachment),
        Route("/favicon.ico", lambda _: Response(status_code=204)),
        Route("/api/webrtc/offer", webrtc_offer, methods=["POST"]),
        WebSocketRoute("/ws/live", live),
        *device_routes(options.model, manifest, policy.token, PAGE_TOKEN),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={ClientDisconnect: client_left, HTTPException: http_error}
    )
    app.state.info = info
    app.state.token = policy.token
    app.state.job = job
    app.state.peers = peers
    guarded = Guard(app, policy)
    guarded.state = app.state
    return guarded


def _configure(session: Session, text: str, job: PersonalizeJob, artifacts: list[ArtifactChoice]) -> list[str]:
    data = parse_json(text, "the settings", MAX_SETTINGS_BYTES)
    if not isinstance(data, dict):
        raise PocketswapError("settings must be a JSON object")
    if data.pop("use_personalised", False):
        if job.artifact is None:
            raise PocketswapError("no personalised model yet: run the Personalize tab first")
        session.use_model(job.artifact)
    if "artifact" in data:  # the Live tab's picker: another export of the served model
        index = whole_number(data.pop("artifact"), "artifact", 0, 10_000)
        if index >= len(artifacts):
            raise PocketswapError(f"artifact {index} is out of range (this model has {len(artifacts)} exports)")
        if artifacts[index].unavailable:
            raise PocketswapError(f"{artifacts[index].name}: {artifacts[index].unavailable}")
        if Path(artifacts[index].path) != session.models.model_path:
            session.use_model(Path(artifacts[index].path))
    session.configure(data)
    return [json.dumps({"settings": {k: v for k, v in vars(session.settings).items() if not k.startswith("_")}})]


def _frame(session: Session, data: bytes) -> list[str | bytes]:
    if len(data) <= HEADER.size:
        raise PocketswapError("empty frame")
    (sent_ms,) = HEADER.unpack_from(data)
    start = time.perf_counter()
    frame = decode_jpeg(data[HEADER.size :])
    decoded = time.perf_counter()
    out, timings, faces = session.process(frame)
    processed = time.perf_counter()
    jpeg = encode_jpeg(out)
    timings = {k: round(v, 2) for k, v in timings.items() if k in STAGES}
    timings["decode"] = round((decoded - start) * 1e3, 2)
    timings["encode"] = round((time.perf_counter() - processed) * 1e3, 2)
    server_ms = round((time.perf_counter() - start) * 1e3, 2)
    stats = {"sent_ms": sent_ms, "server_ms": server_ms, "stages": timings, "faces": faces, "shape": frame.shape[:2]}
    return [json.dumps({"stats": stats}), jpeg]


def _attachment(name: str | None, suffix: str) -> dict[str, str]:
    stem = Path(name or "upload").stem or "upload"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return {"Content-Disposition": f'attachment; filename="{safe}_swapped{suffix}"'}


@contextmanager
def serving_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` on a free port of ``host`` in a background thread; yields its URL (tests, ``bench app``)."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PocketswapError(f"the app did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(options: AppOptions, host: str = "127.0.0.1", port: int = 7860, allow_hosts: tuple[str, ...] = ()) -> None:
    """Serve the app until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    policy = AccessPolicy(bind_host=host, extra_hosts=tuple(h.lower() for h in allow_hosts))
    app = create_app(options, policy)
    if is_loopback(host):
        log.info("pocketswap app on http://%s:%d/  (this machine only; Ctrl+C stops)", host, port)
    else:
        shown = host
        if host in ("0.0.0.0", "::"):
            import socket

            try:
                shown = socket.gethostbyname(socket.gethostname())
            except OSError:
                shown = "THIS-MACHINE-ADDRESS"
        log.warning(
            "serving on %s:%d BEYOND THIS MACHINE: anyone on the network who has the URL below can use the camera "
            "page, swap uploaded photos and videos, start personalisations (writing under %s) and read the served "
            "model and the face it carries. The page needs the launch token in the URL; share it only with "
            "people you trust. There is no TLS: browsers allow the camera only on localhost or https.",
            host, port, options.work_dir,
        )  # fmt: skip
        log.warning("pocketswap app on http://%s:%d/?token=%s  (Ctrl+C stops)", shown, port, policy.token)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=16 * 1024 * 1024)
