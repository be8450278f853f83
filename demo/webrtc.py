"""WebRTC transport of the Live tab (aiortc): the browser's camera track in, the swapped track back.

The page offers (non-trickle: its ICE candidates are in the SDP) and ``POST /api/webrtc/offer`` answers.
Frames arrive decoded; only the newest is swapped (older ones are dropped, so a slow frame delays the
next instead of queueing) and goes back re-encoded on the same connection. Settings travel over the
page's data channel ("live", the same JSON as the WebSocket's text messages); each swapped frame's
timings come back on it.

Every frame the page sends carries a **stamp band**: extra rows under the camera image whose square
cells (1/``STAMP_COLUMNS`` of the width, so the band scales with the frame when the browser's encoder
lowers the resolution) encode the page's clock when the frame was drawn. The server swaps the image above the band
and sends the band back untouched, so the page reads its own clock off each displayed frame: the
capture-to-display latency, measured the same way as the WebSocket path's (which carries the time in a
header). Neither the page's view nor the virtual camera shows the band.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np

from pocketswap.core.errors import PocketswapError
from pocketswap.demo.pipeline import STAGES

log = logging.getLogger(__name__)

STAMP_COLUMNS = 40  # cells across the frame: 16 px squares at 640 (one VP8 macroblock: survives coding)
STAMP_BITS = 16  # the page's clock in milliseconds, modulo 2**16
STAMP_MARK = (1, 0, 1, 1, 0, 0, 1, 0)  # cells after the clock bits: a band is present and intact
MAX_PEERS = 8  # live WebRTC connections at once (each owns a swap session)
CONNECT_TIMEOUT_S = 30.0  # an answered offer that never connects is dropped (and its session freed)


def stamp_rows(width: int) -> int:
    """Rows of the stamp band under a frame ``width`` pixels wide (the cells are square)."""
    return max(1, round(width / STAMP_COLUMNS))


def read_stamp(band: np.ndarray) -> int | None:
    """The page clock (ms mod 2**16) encoded in a stamp band (RGB rows under the image), or None if
    the band does not hold an intact stamp."""
    pitch = band.shape[1] / STAMP_COLUMNS
    if band.shape[0] != stamp_rows(band.shape[1]) or pitch < 2:
        return None
    centres = ((np.arange(STAMP_BITS + len(STAMP_MARK)) + 0.5) * pitch).astype(int)
    bits = band[band.shape[0] // 2, centres].mean(axis=-1) > 127
    if tuple(int(b) for b in bits[STAMP_BITS:]) != STAMP_MARK:
        return None
    return int(np.dot(bits[:STAMP_BITS], 1 << np.arange(STAMP_BITS)))


def split_stamp(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, band): the camera image and the stamp band under it."""
    rows = stamp_rows(frame.shape[1])
    if frame.shape[0] <= rows:
        raise PocketswapError(f"frame of {frame.shape[0]} rows has no image above the {rows}-row stamp band")
    return frame[:-rows], frame[-rows:]


def frame_end_jitter_buffer():
    """aiortc's jitter buffer class, completing a video frame at its last packet (RTP marker bit).

    aiortc's own buffer hands a frame to the decoder only when the *next* frame's first packet arrives,
    which holds every camera frame one frame interval (33 ms at 30 FPS) on the server. The sender marks
    a frame's last packet (RFC 3550; aiortc and browsers do), so a run of packets of one timestamp that
    ends in a marker is complete. Without a marker (lost packet) aiortc's rule still applies.
    """
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    class FrameEndJitterBuffer(JitterBuffer):
        def _remove_frame(self, sequence_number: int):
            frame = super()._remove_frame(sequence_number)
            if frame is not None or not self._is_video or self._origin is None:
                return frame
            packets = []
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self.capacity]
                if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                    return None
                packets.append(packet)
                if packet.marker:
                    self.remove(len(packets))
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)
            return None

    return FrameEndJitterBuffer


def _install_frame_end_buffer() -> None:
    """Make aiortc's receivers (created after this) use :func:`frame_end_jitter_buffer` (aiortc pinned)."""
    import aiortc.rtcrtpreceiver as receiver

    if getattr(receiver.JitterBuffer, "__name__", "") != "FrameEndJitterBuffer":
        receiver.JitterBuffer = frame_end_jitter_buffer()


class _Newest:
    """The newest frame of a remote track (older ones are dropped)."""

    def __init__(self, track) -> None:
        self.frame = None
        self.arrived = asyncio.Event()
        self.task = asyncio.ensure_future(self._pull(track))

    async def _pull(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                self.frame = await track.recv()
                self.arrived.set()
        except MediaStreamError:
            self.arrived.set()  # wakes the reader, which then sees the track ended

    async def take(self):
        await self.arrived.wait()
        self.arrived.clear()
        if self.task.done() and self.frame is None:
            return None
        frame, self.frame = self.frame, None
        return frame


class Peer:
    """One browser tab on WebRTC: its connection, swap session, the newest camera frame and the data channel."""

    def __init__(self, pc, session, configure: Callable[[Any, str], list[str]]) -> None:
        self.pc = pc
        self.session = session
        self.configure = configure
        self.channel = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketswap-webrtc")  # one model, in order
        self.created = time.monotonic()

    def send(self, message: dict[str, Any] | str) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(message if isinstance(message, str) else json.dumps(message))

    async def on_message(self, text: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            for reply in await loop.run_in_executor(self.worker, self.configure, self.session, text):
                self.send(reply)
        except (PocketswapError, ValueError, TypeError, OverflowError) as exc:
            self.send({"error": str(exc)})

    def swap(self, frame):
        """Swap the image above the stamp band of a decoded video frame (the band goes back as it came);
        runs in the peer's worker, conversions included, so the event loop only moves packets."""
        from av import VideoFrame

        start = time.perf_counter()
        image, band = split_stamp(frame.to_ndarray(format="rgb24"))
        converted = time.perf_counter()
        out, timings, faces = self.session.process(np.ascontiguousarray(image))
        processed = time.perf_counter()
        reply = VideoFrame.from_ndarray(np.concatenate([out, band], axis=0), format="rgb24")
        reply.pts, reply.time_base = frame.pts, frame.time_base or Fraction(1, 90000)
        stages = {k: round(v, 2) for k, v in timings.items() if k in STAGES}
        stages["convert"] = round((converted - start + time.perf_counter() - processed) * 1e3, 2)
        server_ms = round((time.perf_counter() - start) * 1e3, 2)
        stats = {"stamp": read_stamp(band), "server_ms": server_ms, "stages": stages, "faces": faces,
                 "shape": image.shape[:2]}  # fmt: skip
        return reply, stats

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.session.virtual_camera.close()


def swapped_track(peer: Peer, source):
    """A video track of ``source``'s newest frames, swapped in ``peer``'s session."""
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class SwappedTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.newest = _Newest(source)

        async def recv(self):
            loop = asyncio.get_running_loop()
            while True:
                frame = await self.newest.take()
                if frame is None:
                    self.stop()
                    raise MediaStreamError
                try:
                    reply, stats = await loop.run_in_executor(peer.worker, peer.swap, frame)
                except (PocketswapError, ValueError) as exc:
                    log.info("live frame skipped: %s", exc)
                    peer.send({"error": str(exc)})
                    continue
                peer.send({"stats": stats})
                return reply

        def stop(self) -> None:
            self.newest.task.cancel()
            super().stop()

    return SwappedTrack()


class WebRTCPeers:
    """The app's live WebRTC connections: answers offers, closes them all at shutdown."""

    def __init__(
        self,
        make_session: Callable[[], Any],
        configure: Callable[[Any, str], list[str]],
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        for name in ("aioice", "aiortc"):  # every ICE check at INFO would drown the app's own log
            logging.getLogger(name).setLevel(logging.WARNING)
        self.make_session = make_session
        self.configure = configure
        self.connect_timeout_s = connect_timeout_s
        self.peers: set[Peer] = set()

    async def answer(self, offer: dict[str, Any]) -> dict[str, str]:
        """The SDP answer to the page's offer ({"sdp", "type": "offer"}); raises PocketswapError on a bad one."""
        _install_frame_end_buffer()
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        if not isinstance(offer, dict) or offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
            raise PocketswapError('the offer must be {"sdp": "...", "type": "offer"}')
        if len(self.peers) >= MAX_PEERS:  # an offer that never connected gives its slot to a new one
            waiting = sorted((p for p in self.peers if p.pc.connectionState != "connected"), key=lambda p: p.created)
            if not waiting:
                raise PocketswapError(f"{MAX_PEERS} live WebRTC connections already; close a tab")
            log.info("webrtc: dropping the oldest unconnected offer for a new one")
            await self._drop(waiting[0])
        session = await asyncio.to_thread(self.make_session)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only: no STUN lookups
        peer = Peer(pc, session, self.configure)
        self.peers.add(peer)

        @pc.on("datachannel")
        def _channel(channel) -> None:
            peer.channel = channel
            channel.on("message", lambda text: asyncio.ensure_future(peer.on_message(text)))

        @pc.on("track")
        def _track(track) -> None:
            if track.kind == "video":
                pc.addTrack(swapped_track(peer, track))

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("webrtc connection %s", pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self._drop(peer)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("it has no video track (send the camera)")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc's errors for a malformed or unusable SDP (no common codec, ...)
            await self._drop(peer)
            reason = str(exc) or type(exc).__name__
            raise PocketswapError(f"the WebRTC offer could not be answered: {reason[:200]}") from exc
        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._drop_unconnected, peer)
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    def _drop_unconnected(self, peer: Peer) -> None:
        if peer in self.peers and peer.pc.connectionState != "connected":
            log.info("webrtc peer dropped: not connected after %.0f s", self.connect_timeout_s)
            asyncio.ensure_future(self._drop(peer))

    async def _drop(self, peer: Peer) -> None:
        if peer in self.peers:
            self.peers.discard(peer)
            peer.close()
            await peer.pc.close()

    async def close_all(self) -> None:
        for peer in list(self.peers):
            await self._drop(peer)
