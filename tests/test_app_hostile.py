"""The app's hostile-client matrix: a real `pocketswap app` on localhost, sent what another website, a
DNS-rebinding name or a careless script would send. Every case must end in a 4xx with one readable JSON
line (or a refused WebSocket handshake), no traceback in the server's log, nothing outside the app's
own job folders written or deleted, nothing of another client's changed, bounded memory, and the
server still healthy afterwards (checked after each case)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import psutil
import pytest
import torch

from pocketswap.core.imageio import write_image
from pocketswap.demo.clip import synthetic_frames
from pocketswap.demo.job_folders import JOB_ID, read_state
from pocketswap.demo.personal_job import CHILD_ENTRY
from pocketswap.demo.video import VideoWriter
from pocketswap.demo.web import AppOptions, create_app, serving_in_thread
from pocketswap.demo.web_live import HEADER
from pocketswap.demo.webrtc import MAX_PEERS
from pocketswap.faces import samples
from pocketswap.student import StudentNet, get_preset
from pocketswap.student.checkpoint import save_checkpoint

UPLOAD_MB = 2  # the hostile server's upload limit (small, so oversized bodies stay cheap to send)


class LogTrap(logging.Handler):
    """Every record the server logs while the matrix runs (a traceback is a failed case)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [self.format(r) for r in self.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "nano", StudentNet(get_preset("nano")).eval())
    universal = save_checkpoint(root / "universal", StudentNet(get_preset("nano", size=64)), extra={"step": 0})
    pool = root / "pool"
    pool.mkdir()
    for name in ("astronaut", "lfw_00", "lfw_01", "lfw_02"):
        write_image(pool / f"{name}.png", samples.load(name))
    people = root / "people"
    people.mkdir()
    write_image(people / "grace_hopper.png", samples.load("grace_hopper"))
    (root / "victim").mkdir()  # a folder outside the work dir that traversal names aim at
    (root / "victim" / "keep.txt").write_text("mine")
    options = AppOptions(model=checkpoint, identity=people, universal=universal, work_dir=root / "work" / "app",
                         personal_faces=str(pool), max_upload_mb=UPLOAD_MB)  # fmt: skip
    trap = LogTrap()
    logging.getLogger().addHandler(trap)
    app = create_app(options)
    try:
        with serving_in_thread(app) as url:
            yield url, root, app, trap
    finally:
        logging.getLogger().removeHandler(trap)


class Client:
    """Raw HTTP to the app with full control of Host, Origin and the token."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.token = parts.hostname, parts.port, token

    def request(self, method: str, path: str, body=None, headers=None, token: bool = True, host: str | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        all_headers = {"Host": host or f"{self.host}:{self.port}"} | (
            {"X-Pocketswap-Token": self.token} if token else {}
        )
        all_headers |= headers or {}
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in all_headers.items():
            conn.putheader(key, value)
        chunked = body is not None and not isinstance(body, bytes)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            if chunked:
                for piece in body:
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
            elif body is not None:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data

    def handshake(self, path: str, headers: dict[str, str], host: str | None = None) -> int:
        """The HTTP status of a WebSocket handshake (101: accepted)."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'{self.host}:{self.port}'}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                     "Sec-WebSocket-Version: 13", *[f"{k}: {v}" for k, v in headers.items()]]  # fmt: skip
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            return int(sock.recv(4096).split(b" ")[1])


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None) -> tuple[bytes, str]:
    boundary = "pocketswaphostile"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    for key, (name, data) in (files or {}).items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _png_bomb(side: int = 20000) -> bytes:
    ok, data = cv2.imencode(".png", np.zeros((side, side), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok and len(data) < 2 * 1024 * 1024
    return data.tobytes()


def _encoded(kind: str, frames: int = 1) -> bytes:
    """A real image file of ``kind`` (PIL's writer), several frames for an animation."""
    import io

    from PIL import Image

    images = [Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=kind, save_all=frames > 1, append_images=images[1:])
    return buffer.getvalue()


def _video(width: int, height: int, frames: int = 3, audio: str | None = None, codec: str = "libx264",
           container: str = "mp4", noisy: bool = False) -> bytes:  # fmt: skip
    """A small video file (grey frames, or noise that compresses badly; ``audio``: a second of silence)."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        video = out.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream(audio, rate=16000) if audio else None
        rng = np.random.default_rng(0)
        for _ in range(frames):
            pixels = (
                rng.integers(0, 255, (height, width, 3), np.uint8)
                if noisy
                else np.full((height, width, 3), 90, np.uint8)
            )
            for packet in video.encode(av.VideoFrame.from_ndarray(pixels, "rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            for start in range(0, 16000 - 1024, 1024):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return buffer.getvalue()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _assert_clean(status: int, data: bytes, app_server, expected: tuple[int, ...] = (400, 403, 409, 413, 415, 422)):
    url, root, app, trap = app_server
    assert status in expected, (status, data[:300])
    reply = json.loads(data)
    assert isinstance(reply["error"], str) and "\n" not in reply["error"].strip() and len(reply["error"]) < 400
    assert not trap.tracebacks(), trap.tracebacks()
    assert _tree(root / "victim") == {"keep.txt": hashlib.sha256(b"mine").hexdigest()[:12]}
    healthy, _ = Client(url, app.state.token).request("GET", "/api/model")
    assert healthy == 200


ORIGINS = ("http://127.0.0.1:1", "null", "http://evil.example")
STATE_CHANGING = (
    ("POST", "/api/personalize"),
    ("POST", "/api/personalize/cancel"),
    ("POST", "/api/files"),
    ("POST", "/api/files/job"),
    ("POST", "/api/webrtc/offer"),
)
READS = (("GET", "/api/model"), ("GET", "/api/personalize"), ("GET", "/api/compare"), ("GET", "/api/compare.png"),
         ("GET", "/api/personalize/preview.png"), ("GET", "/api/files/progress?job=x"))  # fmt: skip
FOREIGN_HOSTS = ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost.evil.example:80")


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize(("method", "path"), STATE_CHANGING + READS)
def test_a_foreign_origin_is_refused_even_with_the_token(app_server, method, path, origin):
    url, _, app, _ = app_server
    body, kind = multipart({"sample": "sample:/../..", "steps": "2", "pairs": "16"})
    status, data = Client(url, app.state.token).request(
        method, path, body if method == "POST" else None, {"Origin": origin, "Content-Type": kind}
    )
    _assert_clean(status, data, app_server, (403,))
    assert "refused" in json.loads(data)["error"]


@pytest.mark.parametrize("token", ("", "wrong-token"))
@pytest.mark.parametrize(("method", "path"), STATE_CHANGING + READS)
def test_no_token_no_api(app_server, method, path, token):
    url, _, app, _ = app_server
    headers = {"X-Pocketswap-Token": token} if token else {}
    status, data = Client(url, app.state.token).request(method, path, b"" if method == "POST" else None, headers,
                                                        token=False)  # fmt: skip
    _assert_clean(status, data, app_server, (403,))
    assert "token" in json.loads(data)["error"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("path", ("/", "/api/model", "/api/personalize"))
def test_a_foreign_host_is_refused_against_dns_rebinding(app_server, path, host):
    url, _, app, _ = app_server
    status, data = Client(url, app.state.token).request("GET", path, host=host)
    _assert_clean(status, data, app_server, (403,))
    assert "DNS-rebinding" in json.loads(data)["error"]


@pytest.mark.parametrize(
    ("headers", "query", "host"),
    [
        ({"Origin": "http://evil.example"}, "?token={token}", None),
        ({"Origin": "null"}, "?token={token}", None),
        ({"Origin": "http://127.0.0.1:1"}, "?token={token}", None),
        ({}, "", None),
        ({}, "?token=guess", None),
        ({}, "?token={token}", "evil.example"),
    ],
)
def test_live_websocket_handshakes_from_elsewhere_are_refused(app_server, headers, query, host):
    url, _, app, trap = app_server
    client = Client(url, app.state.token)
    assert client.handshake("/ws/live" + query.format(token=app.state.token), headers, host) == 403
    origin = {"Origin": f"http://{client.host}:{client.port}"}
    assert client.handshake(f"/ws/live?token={app.state.token}", origin) == 101  # the page's own: accepted
    assert not trap.tracebacks()


def test_the_page_carries_the_token_and_only_its_own_origin_is_served(app_server):
    url, _, app, _ = app_server
    client = Client(url, app.state.token)
    status, page = client.request("GET", "/", token=False)
    assert status == 200 and app.state.token.encode() in page
    assert client.request("GET", "/api/model", headers={"Origin": url})[0] == 200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sample": "sample:/../.."}, "unknown sample"),
        ({"sample": "sample:/../../.."}, "unknown sample"),
        ({"sample": "sample:/../../../../victim"}, "unknown sample"),
        ({"sample": "../victim"}, "unknown sample"),
        ({"sample": "/etc/passwd"}, "unknown sample"),
        ({"sample": "sample:grace_hopper", "steps": str(10**12)}, r"steps must be in \[1, "),
        ({"sample": "sample:grace_hopper", "steps": "Infinity"}, "steps must be a whole number"),
        ({"sample": "sample:grace_hopper", "steps": "1e400"}, "steps must be a whole number"),
        ({"sample": "sample:grace_hopper", "steps": "2.5"}, "steps must be a whole number"),
        ({"sample": "sample:grace_hopper", "pairs": "-5"}, r"pairs must be in \[8, "),
        ({"sample": "sample:grace_hopper", "pairs": "NaN"}, "pairs must be a whole number"),
    ],
)
def test_personalize_names_and_numbers_are_validated_and_nothing_is_deleted(app_server, fields, message):
    url, root, app, _ = app_server
    body, kind = multipart({"steps": "2", "pairs": "16"} | fields)
    status, data = Client(url, app.state.token).request("POST", "/api/personalize", body, {"Content-Type": kind})
    _assert_clean(status, data, app_server, (422,))
    assert __import__("re").search(message, json.loads(data)["error"]), data
    jobs = root / "work" / "app" / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), "a refused request left a job folder"
    assert (root / "nano").is_dir() and (root / "universal").exists() and (root / "pool").is_dir()


@pytest.mark.parametrize(
    ("path", "fields", "files", "message"),
    [
        ("/api/files", {}, {"file": ("bomb.png", _png_bomb())}, "MP limit"),
        (
            "/api/personalize",
            {"steps": "2", "pairs": "16"},
            {"photo": ("bomb.png", _png_bomb())},
            "over the 50 MP limit",
        ),
        (
            "/api/personalize",
            {"sample": "sample:grace_hopper"},
            {"faces": ("bomb.png", _png_bomb())},
            "over the 50 MP limit",
        ),
        ("/api/files", {}, {"file": ("anim.gif", b"GIF89a" + b"\0" * 64)}, "unsupported file type .gif"),
        ("/api/files", {}, {"file": ("x.png", _encoded("GIF", 2))}, "GIF images are not supported"),
        ("/api/files", {}, {"file": ("a.webp", _encoded("WEBP", 3))}, "animated or multi-page"),
        ("/api/files", {}, {"file": ("a.tiff", _encoded("TIFF", 2))}, "animated or multi-page"),
        ("/api/files", {"job": "client-chosen"}, {"file": ("a.png", b"x")}, "unknown or used job id"),
        ("/api/files", {"identity": "1e400"}, {"file": ("a.png", b"x")}, "identity must be a whole number"),
        ("/api/files", {}, {"file": ("a.mp4", b"\0" * 5000)}, "the uploaded video a.mp4: not a video"),
        ("/api/files", {}, {"file": ("tiny.mp4", _video(16, 16))}, "video frames of 16x16 px are too small"),
        (
            "/api/personalize",
            {"sample": "sample:grace_hopper"},
            {"faces": ("me.webm", b"\0" * 5000)},
            "the uploaded video me.webm: not a video",
        ),
        (
            "/api/personalize",
            {"sample": "sample:grace_hopper"},
            {"faces": ("tiny.mp4", _video(16, 16))},
            "the uploaded video tiny.mp4: video frames of 16x16 px are too small",
        ),
    ],
)
def test_uploads_are_checked_before_decoding(app_server, path, fields, files, message):
    url, _, app, _ = app_server
    process = psutil.Process()
    before = process.memory_info().rss
    body, kind = multipart(fields, files)
    status, data = Client(url, app.state.token).request("POST", path, body, {"Content-Type": kind})
    _assert_clean(status, data, app_server)
    error = json.loads(data)["error"]
    assert message in error, data
    assert process.memory_info().rss - before < 300 * 1024 * 1024, "a bomb was decoded"
    assert "pocketswap-" not in error and tempfile.gettempdir() not in error, "an error named the server's temp file"
    if next(iter(files.values()))[0].endswith((".mp4", ".webm")):
        assert "image" not in error, "a video was called an image"


def test_a_video_whose_sound_cannot_go_into_mp4_is_swapped_silent_and_says_so(app_server):
    """An .avi with PCM sound: the .mp4 cannot carry PCM, so the swap comes back without sound and its summary
    says why (before: an error naming the server's temporary file)."""
    url, _, app, trap = app_server
    body, kind = multipart({}, {"file": ("talk.avi", _video(128, 96, frames=4, audio="pcm_s16le", codec="mpeg4",
                                                          container="avi"))})  # fmt: skip
    conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=120)
    conn.request("POST", "/api/files", body, {"Content-Type": kind, "X-Pocketswap-Token": app.state.token})
    response = conn.getresponse()
    video, summary = response.read(), json.loads(response.getheader("X-Pocketswap-Summary") or "{}")
    assert response.status == 200 and video[4:8] == b"ftyp", (response.status, video[:200])
    assert summary["frames"] == 4 and "pcm_s16le audio cannot go into .mp4" in summary["audio"], summary
    assert "pocketswap-" not in summary["audio"] and not trap.tracebacks()


def _chunks(total: int, size: int = 256 * 1024):
    """A multipart upload that never ends within ``total`` bytes, sent chunked (no Content-Length)."""
    yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    for _ in range(total // size):
        yield b"a" * size


@pytest.mark.parametrize("path", ("/api/files", "/api/personalize", "/api/webrtc/offer"))
@pytest.mark.parametrize("how", ("content-length", "chunked"))
def test_oversized_bodies_are_cut_off(app_server, path, how):
    url, _, app, _ = app_server
    size = (UPLOAD_MB + 1) * 1024 * 1024
    body = b"".join(_chunks(size)) if how == "content-length" else _chunks(size)
    status, data = Client(url, app.state.token).request(
        "POST", path, body, {"Content-Type": "multipart/form-data; boundary=x"}
    )
    _assert_clean(status, data, app_server, (413,))


def test_a_webrtc_offer_that_is_too_large_or_deep_or_odd_is_refused(app_server):
    url, _, app, _ = app_server
    client = Client(url, app.state.token)
    for body, code, message in (
        (b"[" * 200_000 + b"]" * 200_000, 413, "larger than 256 kB"),  # its own limit, named as it is
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b'{"sdp": NaN, "type": "offer"}', 400, "not valid JSON"),
        (b'{"sdp": 1e400, "type": "offer"}', 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ):
        status, data = client.request("POST", "/api/webrtc/offer", body, {"Content-Type": "text/plain"})
        _assert_clean(status, data, app_server, (code,))
        assert message in json.loads(data)["error"], data


def _offer_sdp(codec: str | None = None) -> str:
    """A real browser-like offer (aiortc as the client), optionally with every video codec renamed."""
    import asyncio

    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = asyncio.run(make())
    if codec:
        for name in ("VP8", "H264", "rtx"):
            sdp = sdp.replace(f" {name}/", f" {codec}/")
    return sdp


def test_webrtc_slots_are_never_leaked_nor_held_by_unconnected_offers(app_server):
    url, _, app, trap = app_server
    client = Client(url, app.state.token)
    peers = app.state.peers.peers
    bogus = json.dumps({"sdp": _offer_sdp("X-NOPE"), "type": "offer"}).encode()
    for _ in range(MAX_PEERS + 2):  # unknown codecs: refused, and the slot is freed each time
        status, data = client.request("POST", "/api/webrtc/offer", bogus, {"Content-Type": "application/json"})
        _assert_clean(status, data, app_server, (422,))
    assert len(peers) == 0
    good = json.dumps({"sdp": _offer_sdp(), "type": "offer"}).encode()
    for _ in range(MAX_PEERS + 3):  # offers that never connect: a new one takes the oldest one's slot
        status, data = client.request("POST", "/api/webrtc/offer", good, {"Content-Type": "application/json"})
        assert status == 200 and json.loads(data)["type"] == "answer", data
    assert len(peers) == MAX_PEERS
    assert not trap.tracebacks()


def test_live_settings_and_frames_that_are_hostile_leave_the_session_going(app_server):
    from websockets.sync.client import connect

    url, _, app, trap = app_server
    frame = next(synthetic_frames("astronaut", frames=1, empty_every=0))
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    cases = [
        ("[" * 100_000, "over 16 kB"),
        ("[" * 5_000 + "]" * 5_000, "nested too deeply"),
        ('{"detect_every": Infinity}', "not valid JSON"),
        ('{"detect_every": 1e400}', "not valid JSON"),
        ('{"detect_every": NaN}', "not valid JSON"),
        ('{"detect_every": 1e9}', r"'detect_every' must be in"),
        ('{"detect_every": true}', "'detect_every' must be an integer"),
        ('{"identity": 2.5}', "'identity' must be an integer"),
        ('{"swap": "yes"}', "'swap' must be true or false"),
        ('{"view": "' + "x" * 5_000 + '"}', r"'view' must be one of .{0,120}$"),  # echoes are bounded
        ('{"artifact": 1e300}', "artifact must be in"),
        ('"just a string"', "settings must be a JSON object"),
    ]
    origin = {"Origin": url}
    process = psutil.Process()
    with connect(url.replace("http", "ws") + f"/ws/live?token={app.state.token}", additional_headers=origin,
                 max_size=None) as ws:  # fmt: skip
        for text, message in cases:
            ws.send(text)
            assert __import__("re").search(message, json.loads(ws.recv(timeout=60))["error"]), text
        before = process.memory_info().rss
        for _ in range(2):
            ws.send(HEADER.pack(0.0) + _png_bomb())
            assert "MP limit" in json.loads(ws.recv(timeout=60))["error"]
        assert process.memory_info().rss - before < 300 * 1024 * 1024, "a frame bomb was decoded"
        for odd in (float("nan"), float("inf")):  # a capture time that JSON cannot carry back
            ws.send(HEADER.pack(odd) + jpeg)
            assert "not a finite number" in json.loads(ws.recv(timeout=60))["error"]
        ws.send(HEADER.pack(1.0) + jpeg)
        assert json.loads(ws.recv(timeout=60))["stats"]["faces"] == 1  # the session goes on
        ws.recv(timeout=60)
    assert not trap.tracebacks()


def test_a_video_swap_stops_when_its_client_leaves(app_server, tmp_path):
    url, _, app, trap = app_server
    clip = tmp_path / "long.mp4"
    with VideoWriter(clip, 30.0, notice=None) as writer:
        for frame in synthetic_frames("astronaut", frames=400, width=320, height=240, empty_every=0):
            writer.write(frame)
    client = Client(url, app.state.token)
    job = json.loads(client.request("POST", "/api/files/job")[1])["job"]
    body, kind = multipart({"job": job}, {"file": ("long.mp4", clip.read_bytes())})
    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    conn.request("POST", "/api/files", body, {"Content-Type": kind, "X-Pocketswap-Token": app.state.token})
    deadline = time.monotonic() + 60
    while json.loads(client.request("GET", f"/api/files/progress?job={job}")[1]).get("frames", 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the tab is closed mid-swap
    conn.close()
    deadline = time.monotonic() + 30
    while not (progress := json.loads(client.request("GET", f"/api/files/progress?job={job}")[1]))["done"]:
        assert time.monotonic() < deadline, "the swap went on after its client left"
        time.sleep(0.2)
    assert progress["frames"] < 400, progress
    second = client.request("POST", "/api/files", body, {"Content-Type": kind})  # an id works once only
    _assert_clean(*second, app_server, (422,))
    assert not trap.tracebacks()


def test_one_job_at_a_time_never_touches_another_clients_files_and_cancels(app_server):
    url, root, app, trap = app_server
    client = Client(url, app.state.token)
    photo = (root / "pool" / "lfw_00.png").read_bytes()
    body, kind = multipart({"steps": "20000", "pairs": "16"}, {"photo": ("me.png", photo)})
    status, data = client.request("POST", "/api/personalize", body, {"Content-Type": kind})
    assert status == 200, data
    first = json.loads(data)
    assert first["state"] == "running" and JOB_ID.match(first["job"]) and "me" in first["job"]
    folder = Path(first["out"]).parent
    mine = _tree(folder)
    other, kind = multipart(
        {"steps": "2", "pairs": "16"}, {"photo": ("me.png", (root / "pool" / "lfw_01.png").read_bytes())}
    )
    status, data = client.request("POST", "/api/personalize", other, {"Content-Type": kind})
    _assert_clean(status, data, app_server, (422,))
    assert "already running" in json.loads(data)["error"]
    assert {k: v for k, v in _tree(folder).items() if k.startswith(("identity", "faces"))} == {
        k: v for k, v in mine.items() if k.startswith(("identity", "faces"))
    }
    assert len(list(folder.parent.iterdir())) == 1  # the refused request left no folder
    status, data = client.request("POST", "/api/personalize/cancel")
    assert status == 200, data
    deadline = time.monotonic() + 120
    while (state := json.loads(client.request("GET", "/api/personalize")[1])["state"]) == "running":
        assert time.monotonic() < deadline, "the cancelled job is still running"
        time.sleep(0.5)
    assert state == "cancelled"
    status, data = client.request("POST", "/api/personalize/cancel")
    _assert_clean(status, data, app_server, (409,))
    assert not trap.tracebacks()


@pytest.mark.parametrize("path", ("/", "/device", "/api/model", "/no-such-page"))
def test_every_response_forbids_framing(app_server, path):
    """Every page and answer, refusals included, says no other site may frame it."""
    url, _, app, _ = app_server
    conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=60)
    conn.request("GET", path, headers={"X-Pocketswap-Token": app.state.token})
    response = conn.getresponse()
    response.read()
    assert response.getheader("X-Frame-Options") == "DENY", (path, response.status)
    assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy", ""), path


def test_a_page_on_another_localhost_port_cannot_use_the_app(app_server, tmp_path):
    """The attack as a browser runs it: a page served from another port posts no-cors forms, opens a
    WebSocket and fetches the API. Nothing starts, nothing is written, the socket never opens."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    from pocketswap.benchmarks.app import chromium_path
    from pocketswap.core.errors import PocketswapError

    try:
        chromium_path()
    except PocketswapError as exc:
        pytest.skip(str(exc))
    url, root, app, trap = app_server
    before = _tree(root)
    ws_url = url.replace("http", "ws")
    (tmp_path / "evil.html").write_text(f"""<!doctype html><script>
      window.results = {{}};
      const form = () => {{ const f = new FormData(); f.append("sample", "sample:/../.."); f.append("steps", "999999");
        f.append("faces", new Blob(["x"]), "a.png"); return f; }};
      Promise.allSettled([
        fetch("{url}/api/personalize", {{method: "POST", mode: "no-cors", body: form()}}),
        fetch("{url}/api/files", {{method: "POST", mode: "no-cors", body: form()}}),
        fetch("{url}/api/webrtc/offer", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                          body: '{{"sdp": "v=0", "type": "offer"}}'}}),
        fetch("{url}/api/model").then((r) => r.text()),
        fetch("{url}/").then((r) => r.text()),
      ]).then((r) => {{ window.results.fetches = r.map((x) => x.status + ":" + (x.value && x.value.length)); }});
      const frame = document.createElement("iframe");  // clickjacking: the app framed under this page
      frame.src = "{url}/";
      document.documentElement.appendChild(frame);
      const ws = new WebSocket("{ws_url}/ws/live");
      ws.onopen = () => {{ window.results.ws = "open"; }};
      ws.onclose = () => {{ window.results.ws = window.results.ws || "closed"; }};
    </script>""")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path)))
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), headless=True)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/evil.html")
            page.wait_for_function("window.results.fetches && window.results.ws", timeout=60_000)
            results = page.evaluate("window.results")
            page.wait_for_timeout(500)
            framed = [frame.url for frame in page.frames if frame != page.main_frame]
            browser.close()
    finally:
        evil.shutdown()
    assert results["ws"] == "closed", results
    assert framed and all(not f.startswith(url) for f in framed), framed  # the browser refused to frame the app
    assert results["fetches"][3].startswith("rejected") and results["fetches"][4].startswith("rejected"), results
    assert app.state.job.state in ("idle", "cancelled"), "a cross-origin form started a job"
    after = _tree(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of what was there changed
    assert not [k for k in after if k not in before and not k.startswith("work/app/jobs/")]
    assert not trap.tracebacks()


# -- the protocol underneath: WebSocket frames and HTTP bytes as a careless or hostile client writes them --
def _ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455), written by hand: client libraries refuse to send bad UTF-8."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    head += bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_frames(sock: socket.socket, count: int | None = None) -> list[tuple[int, bytes]]:
    """The server's frames (opcode, payload) until its close frame, the connection's end or ``count`` frames."""
    buffer, frames = b"", []
    while count is None or len(frames) < count:
        while len(buffer) >= 2:
            size, start = buffer[1] & 0x7F, 2
            if size == 126:
                size, start = (struct.unpack(">H", buffer[2:4])[0], 4) if len(buffer) >= 4 else (None, 4)
            if size is None or len(buffer) < start + size:
                break
            frames.append((buffer[0] & 0x0F, buffer[start : start + size]))
            buffer = buffer[start + size :]
            if frames[-1][0] == 8 or (count is not None and len(frames) >= count):
                return frames
        data = sock.recv(65536)
        if not data:
            return frames
        buffer += data
    return frames


@contextlib.contextmanager
def _live_socket(url: str, token: str):
    """A raw, accepted WebSocket to /ws/live from the app's own page (its Origin), its session made."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        lines = [f"GET /ws/live?token={token} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                 "Sec-WebSocket-Version: 13", f"Origin: {url}"]  # fmt: skip
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(_ws_frame(1, b"{}"))  # once its settings come back, the tab's session is made
        ((opcode, payload),) = _ws_frames(sock, count=1)
        assert opcode == 1 and "settings" in json.loads(payload), payload
        yield sock


def test_websocket_text_that_is_not_utf8_is_answered_and_closed_without_a_traceback(app_server):
    """RFC 6455 fails such a connection (close code 1007); the page first gets one JSON line saying why, the
    server logs one line (uvicorn alone logged a traceback), and every other tab goes on."""
    url, _, app, trap = app_server
    for frames in (
        [_ws_frame(1, b'{"view": "\xff\xfe"}')],
        [_ws_frame(1, b'{"view": "\xc3', fin=False), _ws_frame(0, b'("}')],  # cut inside a character
    ):
        with _live_socket(url, app.state.token) as sock:
            sock.sendall(b"".join(frames))
            answer = _ws_frames(sock)
        assert answer[0][0] == 1 and "must be UTF-8" in json.loads(answer[0][1])["error"], answer
        assert answer[-1][0] == 8 and struct.unpack(">H", answer[-1][1][:2])[0] == 1007, answer
    with _live_socket(url, app.state.token) as sock:  # a character split across two frames is valid UTF-8
        text = '{"view": "sé"}'.encode()
        sock.sendall(_ws_frame(1, text[:-3], fin=False) + _ws_frame(0, text[-3:]))
        ((opcode, payload),) = _ws_frames(sock, count=1)
        assert opcode == 1 and "'view' must be one of" in json.loads(payload)["error"], payload
    assert not trap.tracebacks(), trap.tracebacks()
    assert Client(url, app.state.token).request("GET", "/api/model")[0] == 200


def _raw_http(url: str, data: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send ``data`` as it is (e.g. a header twice); the answer's status and body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("localhost:7860, evil.example", "malformed Host"),
        ("[::1]evil.example", "malformed Host"),
        ("127.0.0.1:99999", "malformed Host"),
        ("localhost:", "malformed Host"),
        ("127.0.0.1:80@evil.example", "malformed Host"),
        ("localhost:7860:80", "malformed Host"),
        ("127.0.0.1 evil.example", "malformed Host"),
        ("[::1]evil.com:7861", "malformed Host"),  # the three
        ("127.0.0.1:7861@evil.com", "malformed Host"),
        ("localhost:7861.", "malformed Host"),
    ],
)
def test_a_host_header_must_be_host_and_port_and_nothing_else(app_server, host, message):
    url, _, app, _ = app_server
    status, data = Client(url, app.state.token).request("GET", "/api/model", host=host)
    _assert_clean(status, data, app_server, (400,))
    assert message in json.loads(data)["error"], data


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("Host: evil.example\r\n", "malformed HTTP"),  # h11 refuses a second Host itself: still one JSON line
        ("Origin: {url}\r\nOrigin: http://evil.example\r\n", "2 origin headers"),
        ("Origin: http://evil.example\r\nOrigin: {url}\r\n", "2 origin headers"),
        ("X-Pocketswap-Token: guess\r\n", "2 x-pocketswap-token headers"),
    ],
)
def test_a_header_that_decides_access_may_come_once_only(app_server, extra, message):
    """Which copy a check reads and which one a proxy or the route trusts may differ: two are refused."""
    url, _, app, _ = app_server
    netloc = urlsplit(url).netloc
    head = (f"GET /api/model HTTP/1.1\r\nHost: {netloc}\r\nX-Pocketswap-Token: {app.state.token}\r\n"
            f"{extra.format(url=url)}Connection: close\r\n\r\n")  # fmt: skip
    status, data = _raw_http(url, head.encode())
    _assert_clean(status, data, app_server, (400,))
    assert message in json.loads(data)["error"], data
    twice = {"Origin": url, "origin": "http://evil.example"}  # a WebSocket handshake too (websockets says 400)
    assert Client(url, app.state.token).handshake(f"/ws/live?token={app.state.token}", twice) in (400, 403)


def test_malformed_http_is_one_json_line(app_server):
    url, _, _, _ = app_server
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        status, data = _raw_http(url, garbage)
        _assert_clean(status, data, app_server, (400,))


def test_half_sent_requests_are_timed_out(app_server):
    """A head that trickles in and never ends (slowloris) and a body that stops both get a 408 and lose their
    connection within the deadline; a connection that sends nothing is closed quietly; whole requests,
    kept-alive ones included, are answered."""
    url, root, _, trap = app_server
    app = create_app(AppOptions(model=root / "nano", identity=root / "people"))
    with serving_in_thread(app, header_timeout_s=1.0, body_idle_s=1.0) as quick:
        parts, token = urlsplit(quick), app.state.token

        def trickle(pieces: list[bytes], every: float = 0.25) -> tuple[float, bytes]:
            with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
                start, answer = time.monotonic(), b""
                for piece in pieces:
                    try:
                        sock.sendall(piece)
                    except OSError:  # closed by the server
                        break
                    if select.select([sock], [], [], every)[0]:
                        break
                try:
                    while chunk := sock.recv(65536):
                        answer += chunk
                except OSError:
                    pass
                return time.monotonic() - start, answer

        head = f"POST /api/files HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Pocketswap-Token: {token}\r\n"
        cases = {
            "head": [b"GET /api/model HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 40,  # 10 s if nobody stops it
            "body": [
                (head + "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 9000\r\n\r\n--x\r\n").encode()
            ]
            + [b""] * 40,  # fmt: skip
        }
        for what, pieces in cases.items():
            took, answer = trickle(pieces)
            assert answer.startswith(b"HTTP/1.1 408 "), (what, answer[:200])
            assert f"request's {what}" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"], answer
            assert took < 4, (what, took)
        took, answer = trickle([b""] * 40)
        assert answer == b"" and took < 4, (took, answer)  # nothing sent: closed without an answer
        with contextlib.closing(http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)) as conn:
            for _ in range(2):
                conn.request("GET", "/api/model", headers={"X-Pocketswap-Token": token})
                response = conn.getresponse()
                assert response.status == 200 and json.loads(response.read())["model"]
    assert not trap.tracebacks(), trap.tracebacks()


# -- the app as its own process: killed, or on a disk that is full or read-only ---------------------------
class AppProcess:
    """``pocketswap app`` run as users run it (its own process, a port of its own), serving the hostile
    fixture's model; its output is collected through a pipe (a file-size limit must not hit the log)."""

    def __init__(self, root: Path, work_dir: Path, env: dict[str, str] | None = None, preexec_fn=None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "pocketswap.cli", "app", str(root / "nano"), "--identity", str(root / "people"),
                   "--universal", str(root / "universal"), "--work-dir", str(work_dir), "--port", str(port)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=os.environ | (env or {}), preexec_fn=preexec_fn)  # fmt: skip
        self.output: list[bytes] = []
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                status, page = Client(self.url, "").request("GET", "/", token=False)
                break
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, self.log()
                time.sleep(0.2)
        assert status == 200, page[:300]
        token = re.search(rb'name="pocketswap-token" content="([^"]+)"', page)[1].decode()
        self.client = Client(self.url, token)

    def log(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_app_takes_its_personalisation_along_and_the_next_app_reports_it(app_server, tmp_path):
    """SIGKILL gives the app no chance to stop its child: the kernel does (PR_SET_PDEATHSIG sends it SIGTERM,
    which it takes as Ctrl+C, keeping what it finished). The app started next marks the job interrupted, says
    so in its log and lists it in the page's job list."""
    _, root, _, _ = app_server
    work = tmp_path / "work"
    first = AppProcess(root, work)
    child = None
    try:
        body, kind = multipart({"sample": "sample:grace_hopper", "steps": "20000", "pairs": "16"})
        status, data = first.client.request("POST", "/api/personalize", body, {"Content-Type": kind})
        assert status == 200, data
        folder = Path(json.loads(data)["out"]).parent
        deadline = time.monotonic() + 120
        while child is None or not (folder / "job.log").stat().st_size:  # it runs, and has said something
            assert time.monotonic() < deadline, first.log()
            child = next((p for p in _children(first.process.pid) if CHILD_ENTRY in p.cmdline()), None)
            time.sleep(0.2)
        assert read_state(folder) == ("running", str(first.process.pid))
        first.process.kill()
        first.process.wait()
        killed = time.monotonic()
        _, alive = psutil.wait_procs([child], timeout=60)
        took = time.monotonic() - killed
        assert not alive, "the personalisation outlived its app"
        assert took < 30, f"the child took {took:.1f} s to stop"  # the trainer finishes its step first
        assert "pocketswap: interrupted; finished work is kept" in (folder / "job.log").read_text(), "not a clean stop"
    finally:
        first.stop()
        if child is not None and child.is_running():
            child.kill()
    second = AppProcess(root, work)
    try:
        status, data = second.client.request("GET", "/api/personalize")
        assert status == 200 and json.loads(data)["state"] == "idle", data
        assert json.loads(data)["jobs"] == [{"job": folder.name, "state": "interrupted", "run": str(folder / "run")}]
        assert read_state(folder) == ("interrupted", "")
        assert f"interrupted when their app stopped: {folder.name}" in second.log(), second.log()
    finally:
        second.stop()
    assert "Traceback" not in first.log() + second.log()


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def _broken_disk(tmp_path: Path, kind: str):
    """A disk under the app's work folder and its TMPDIR that is full or read-only: a tiny tmpfs where this
    test may mount one (root), else a 64 kB file-size limit on the app's process (full) or a folder made
    read-only with chmod (not root: chmod does not stop root). Yields (folder, env, preexec_fn, break_it,
    words): ``break_it()`` makes a read-only disk read-only once the app has started, ``words`` are what
    its refusals must say."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _can_mount() and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                              capture_output=True).returncode == 0  # fmt: skip
    (disk / "tmp").mkdir()
    (disk / "work").mkdir()
    env, preexec, break_it = {"TMPDIR": str(disk / "tmp")}, None, lambda: None
    try:
        if kind == "full" and mounted:  # filled, but for a few kB (Python's temp folder check writes a little)
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.ftruncate(fd, os.fstat(fd).st_size - 8192)
            os.close(fd)
            words = ("No space left on device", "the disk is full")
        elif kind == "full":
            import resource

            def preexec():
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

            preexec, words = preexec, ("File too large", "file-size limit")
        elif mounted:

            def break_it():
                subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

            words = ("read-only",)
        elif os.geteuid() != 0:

            def break_it():
                for folder in (disk / "tmp", disk / "work"):
                    folder.chmod(0o555)

            words = ("not writable", "may not write")
        else:
            pytest.skip("root without mount: no way to make a folder read-only for root")
        yield disk, env, preexec, break_it, words
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        else:
            for folder in (disk / "tmp", disk / "work"):
                folder.chmod(0o755)


@pytest.mark.parametrize("kind", ("full", "read-only"))
def test_every_route_on_a_full_or_read_only_disk_answers_one_line_and_leaves_nothing(app_server, tmp_path, kind):
    """Each request that must write answers 507 with one JSON line naming the disk problem and the folder,
    and what it wrote is gone (no half-written identity photo, no empty faces/ folder, no temporary upload);
    every other route answers as before, and the server's log holds no traceback."""
    _, root, _, _ = app_server
    photo = (root / "pool" / "astronaut.png").read_bytes()  # > 64 kB
    assert len(photo) > 64 * 1024
    noise = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8))[1].tobytes()
    clip = _video(160, 120, frames=12, noisy=True)
    assert len(clip) > 64 * 1024
    with _broken_disk(tmp_path, kind) as (disk, env, preexec, break_it, words):
        app = AppProcess(root, disk / "work", env, preexec)
        try:
            warm = app.client.request("POST", "/api/files", *_form({}, {"file": ("warm.mp4", _video(64, 64))}))
            assert warm[0] == 200, warm  # the temporary folder is known (and was writable) before the disk breaks
            break_it()
            writes = {
                "identity photo": ("/api/personalize", {"steps": "2", "pairs": "16"}, {"photo": ("me.png", photo)}),
                "faces photo": ("/api/personalize", {"sample": "sample:grace_hopper"}, {"faces": ("f.png", photo)}),
                "faces video": ("/api/personalize", {"sample": "sample:grace_hopper"}, {"faces": ("f.mp4", clip)}),
                "spooled upload": ("/api/personalize", {}, {"photo": ("big.png", noise)}),
                "video swap": ("/api/files", {}, {"file": ("clip.mp4", clip)}),
                "spooled image": ("/api/files", {}, {"file": ("big.png", noise)}),
            }
            for what, (path, fields, files) in writes.items():
                status, data = app.client.request("POST", path, *_form(fields, files))
                assert status == 507, (what, status, data[:300])
                assert b"\n" not in data.strip(), data
                error = json.loads(data)["error"]
                assert any(w in error for w in words) and str(disk) in error, (what, error)
                assert "pocketswap-" not in error and "/in." not in error, (what, error)  # no temporary file named
            for method, path, expected in (("GET", "/", 200), ("GET", "/device", 200), ("GET", "/js/main.js", 200),
                                           ("GET", "/api/model", 200), ("GET", "/api/settings", 200),
                                           ("GET", "/api/personalize", 200), ("GET", "/api/compare", 200),
                                           ("GET", "/api/compare.png", 404), ("GET", "/api/personalize/preview.png", 404),
                                           ("GET", "/api/files/progress?job=x", 404), ("POST", "/api/files/job", 200),
                                           ("POST", "/api/personalize/cancel", 409),
                                           ("POST", "/api/webrtc/offer", 400)):  # fmt: skip
                status, data = app.client.request(method, path, b"{" if method == "POST" else None)
                assert status == expected, (path, status, data[:300])
            frame = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
            with _live_socket(app.url, app.client.token) as sock:  # the live tab writes nothing: it goes on
                sock.sendall(_ws_frame(2, HEADER.pack(1.0) + frame))
                ((opcode, payload),) = _ws_frames(sock, count=1)
                assert opcode == 1 and json.loads(payload)["stats"]["faces"] == 0, payload
            jobs = disk / "work" / "jobs"
            assert not jobs.exists() or not list(jobs.iterdir()), list(jobs.rglob("*"))
            assert not list((disk / "tmp").iterdir()), list((disk / "tmp").rglob("*"))
            if kind == "full":  # room for a request, not for its run: the job fails and the page says why
                if (filler := disk / "filler").exists():
                    os.truncate(filler, filler.stat().st_size - 200 * 1024)
                small = (root / "pool" / "lfw_00.png").read_bytes()
                body = _form({"steps": "2", "pairs": "16"}, {"photo": ("me.png", small)})
                status, data = app.client.request("POST", "/api/personalize", *body)
                assert status == 200, data
                deadline = time.monotonic() + 180
                while (job := json.loads(app.client.request("GET", "/api/personalize")[1]))["state"] == "running":
                    assert time.monotonic() < deadline, app.log()[-3000:]
                    time.sleep(0.5)
                assert job["state"] == "failed" and any(w in job["error"] for w in words), job
                assert job["jobs"][0]["state"] == "failed", job["jobs"]
        finally:
            app.stop()
        assert "Traceback" not in app.log(), app.log()[-3000:]
        assert "refused a request: the server cannot write" in app.log() or kind == "read-only", app.log()[-3000:]


def _form(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    body, kind = multipart(fields, files)
    return body, {"Content-Type": kind}


def test_a_job_whose_log_cannot_be_written_still_says_why(tmp_path):
    """A child that failed on a full disk could not log its error either: the page still gets the disk
    problem and the job's folder (a probe write tells; the probe is removed)."""
    import resource

    code = ("import sys; from pathlib import Path; from pocketswap.demo.personal_job import _unlogged_reason; "
            "print(_unlogged_reason(Path(sys.argv[1]), 'distill', 2))")  # fmt: skip
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # noqa: E731
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"distill ended with status 2; the server cannot write under {tmp_path}: File too "
        "large (over the file-size limit this server runs under)"
    )
    assert not list(tmp_path.iterdir())
