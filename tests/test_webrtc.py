"""The WebRTC transport's parts that need no browser: the stamp band that carries the page's clock
through the swap, aiortc's jitter buffer completing frames at their marker bit, and the offer endpoint's
errors. The browser round trip is in tests/test_app.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pocketswap.core.errors import PocketswapError
from pocketswap.demo.webrtc import (
    STAMP_BITS,
    STAMP_MARK,
    frame_end_jitter_buffer,
    read_stamp,
    split_stamp,
    stamp_rows,
)

aiortc = pytest.importorskip("aiortc")


def stamp_band(clock: int, width: int = 640) -> np.ndarray:
    """A band as the page draws it: white cells for the clock's set bits, then the mark, black elsewhere."""
    cell = stamp_rows(width)
    band = np.zeros((cell, width, 3), np.uint8)
    bits = [(clock >> i) & 1 for i in range(STAMP_BITS)] + list(STAMP_MARK)
    for i, bit in enumerate(bits):
        band[:, i * cell : (i + 1) * cell] = 255 * bit
    return band


@pytest.mark.parametrize("clock", [0, 1, 12345, 0xFFFF])
def test_stamp_survives_lossy_video_coding(clock):
    band = stamp_band(clock)
    assert read_stamp(band) == clock
    ok, jpeg = cv2.imencode(".jpg", band, [cv2.IMWRITE_JPEG_QUALITY, 30])  # coarse coding, blurred edges
    assert ok
    assert read_stamp(cv2.GaussianBlur(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), (5, 5), 0)) == clock


def test_a_band_without_the_mark_is_not_a_stamp():
    assert read_stamp(np.full((16, 640, 3), 128, np.uint8)) is None  # a plain frame edge
    assert read_stamp(np.full((16, 640, 3), 255, np.uint8)) is None
    assert read_stamp(stamp_band(7)[:10]) is None  # not the band's height for this width


def test_split_stamp_keeps_the_image_and_refuses_a_frame_without_one():
    frame = np.concatenate([np.full((480, 640, 3), 90, np.uint8), stamp_band(42)])
    image, band = split_stamp(frame)
    assert image.shape == (480, 640, 3) and (image == 90).all()
    assert read_stamp(band) == 42
    with pytest.raises(PocketswapError, match="no image above"):
        split_stamp(frame[-16:])


@pytest.mark.parametrize("width", [480, 320])
def test_stamp_scales_with_the_frame(width):
    """Browsers' encoders lower the resolution under a tight bandwidth estimate: the band scales with it."""
    frame = np.concatenate([np.full((480, 640, 3), 90, np.uint8), stamp_band(31337)])
    scaled = cv2.resize(frame, (width, frame.shape[0] * width // 640), interpolation=cv2.INTER_AREA)
    image, band = split_stamp(scaled)
    assert image.shape[0] == 480 * width // 640
    assert read_stamp(band) == 31337


def _packets(first_seq: int, timestamp: int, count: int, marker_last: bool) -> list:
    from aiortc.rtp import RtpPacket

    packets = []
    for i in range(count):
        packet = RtpPacket(payload_type=96, sequence_number=first_seq + i, timestamp=timestamp)
        packet.marker = int(marker_last and i == count - 1)
        packet._data = bytes([timestamp % 256, i])
        packets.append(packet)
    return packets


def test_jitter_buffer_completes_a_frame_at_its_marker():
    from aiortc.jitterbuffer import JitterBuffer

    ours, stock = frame_end_jitter_buffer()(capacity=128, is_video=True), JitterBuffer(capacity=128, is_video=True)
    frame_a = _packets(100, 3000, 3, marker_last=True)
    emitted_ours = [ours.add(p)[1] for p in frame_a]
    emitted_stock = [stock.add(p)[1] for p in frame_a]
    assert emitted_ours[:2] == [None, None] and emitted_ours[2] is not None  # at the last packet
    assert emitted_ours[2].timestamp == 3000 and emitted_ours[2].data == b"".join(p._data for p in frame_a)
    assert emitted_stock == [None, None, None]  # aiortc waits for the next frame
    frame_b = _packets(103, 6000, 2, marker_last=True)
    assert stock.add(frame_b[0])[1].timestamp == 3000  # ...which is when the stock buffer hands frame A over
    assert [ours.add(p)[1] is not None for p in frame_b] == [False, True]


def test_jitter_buffer_without_a_marker_or_with_a_gap_hands_over_nothing_early():
    buffer = frame_end_jitter_buffer()(capacity=128, is_video=True)
    assert all(buffer.add(p)[1] is None for p in _packets(10, 90, 2, marker_last=False))  # marker lost
    assert buffer.add(_packets(12, 180, 1, marker_last=True)[0])[1].timestamp == 90  # aiortc's rule, as before
    frame_c = _packets(13, 270, 3, marker_last=True)
    assert buffer.add(frame_c[0])[1].timestamp == 180
    assert buffer.add(frame_c[2])[1] is None  # the middle packet is missing: frame 270 is not complete
    _, frame = buffer.add(frame_c[1])  # retransmitted
    assert frame.timestamp == 270 and frame.data == b"".join(p._data for p in frame_c)


def test_an_answered_offer_that_never_connects_is_dropped(tmp_path):
    """A tab that vanishes between offer and connection must not keep its swap session forever."""
    import asyncio
    from functools import partial

    import torch
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import VideoStreamTrack

    from pocketswap.core.imageio import write_image
    from pocketswap.demo.session import AppOptions, Session
    from pocketswap.demo.webrtc import WebRTCPeers
    from pocketswap.faces import samples
    from pocketswap.student import StudentNet, get_preset
    from pocketswap.student.checkpoint import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "nano", StudentNet(get_preset("nano")).eval())
    identity = write_image(tmp_path / "grace_hopper.png", samples.load("grace_hopper"))
    options = AppOptions(model=checkpoint, identity=identity)
    peers = WebRTCPeers(partial(Session, options, [identity]), lambda session, text: [], connect_timeout_s=1.0)

    async def offer_and_vanish() -> tuple[int, int, str]:
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTrack(VideoStreamTrack())
        await client.setLocalDescription(await client.createOffer())
        answer = await peers.answer({"sdp": client.localDescription.sdp, "type": "offer"})
        held = len(peers.peers)
        await client.close()  # the tab is gone before it applies the answer
        await asyncio.sleep(2.0)
        return held, len(peers.peers), answer["type"]

    held, left, kind = asyncio.run(offer_and_vanish())
    assert (held, left, kind) == (1, 0, "answer")
