"""The Live tab's streams: a WebSocket of JPEG frames (one in flight) and WebRTC (:mod:`pocketswap.demo.webrtc`),
each with its own :class:`~pocketswap.demo.session.Session`; settings messages and frames for both."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path

from pocketswap.core.errors import PocketswapError
from pocketswap.demo.guard import parse_json, whole_number
from pocketswap.demo.model_info import ArtifactChoice
from pocketswap.demo.personal_job import PersonalizeJob
from pocketswap.demo.pipeline import STAGES
from pocketswap.demo.session import Session, decode_jpeg, encode_jpeg

log = logging.getLogger(__name__)

MAX_SETTINGS_BYTES = 16 * 1024  # one settings message of the Live tab
MAX_OFFER_BYTES = 256 * 1024  # one WebRTC offer (an SDP is a few kB)
HEADER = struct.Struct("<d")  # each WebSocket frame: the page's capture time (ms), then the JPEG


def live_routes(new_session: Callable[[], Session], configure: Callable) -> tuple[list, object]:
    """The ``/ws/live`` WebSocket and ``POST /api/webrtc/offer`` routes, and the WebRTC peers (closed with the app)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from pocketswap.demo.webrtc import WebRTCPeers

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            session = await asyncio.to_thread(new_session)
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
                    await _reply(websocket, configure, session, message["text"])
                elif message.get("bytes") is not None:
                    await _reply(websocket, swap_frame, session, message["bytes"])
        except WebSocketDisconnect:
            pass
        finally:
            session.virtual_camera.close()

    peers = WebRTCPeers(new_session, configure)

    async def webrtc_offer(request: Request) -> JSONResponse:
        try:
            offer = parse_json(await request.body(), "the offer", MAX_OFFER_BYTES)
        except PocketswapError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            return JSONResponse(await peers.answer(offer))
        except PocketswapError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    async def _reply(websocket, handler, session: Session, payload) -> None:
        try:
            for item in await asyncio.to_thread(handler, session, payload):
                await (websocket.send_bytes(item) if isinstance(item, bytes) else websocket.send_text(item))
        except (PocketswapError, ValueError, TypeError, OverflowError) as exc:
            log.info("live frame skipped: %s", exc)
            await websocket.send_text(json.dumps({"error": str(exc)}))

    routes = [Route("/api/webrtc/offer", webrtc_offer, methods=["POST"]), WebSocketRoute("/ws/live", live)]
    return routes, peers


def configure_session(session: Session, text: str, job: PersonalizeJob, artifacts: list[ArtifactChoice]) -> list[str]:
    """A Live tab's settings message: the switches, another export of the served model (``artifact``) or
    the Personalize tab's result (``use_personalised``); the reply echoes the settings."""
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
    return [json.dumps({"settings": session.settings.to_dict()})]


def swap_frame(session: Session, data: bytes) -> list[str | bytes]:
    """One WebSocket frame (capture time header + JPEG) -> its stats message and the swapped JPEG."""
    if len(data) <= HEADER.size:
        raise PocketswapError("empty frame")
    (sent_ms,) = HEADER.unpack_from(data)
    if not math.isfinite(sent_ms):  # NaN or Infinity would go back as JSON no page can parse
        raise PocketswapError("the frame's capture time (its 8-byte header) is not a finite number")
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


__all__ = ["HEADER", "MAX_OFFER_BYTES", "configure_session", "live_routes", "swap_frame"]
