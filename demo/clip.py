"""A short synthetic test clip made from a bundled face: it moves, scales, and leaves the frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def synthetic_frames(
    sample: str = "astronaut", frames: int = 48, width: int = 640, height: int = 480, empty_every: int = 12
):
    """Yield RGB frames: the face drifts and zooms across a textured background; every
    `empty_every`-th frame (and the one after it) shows background only, as when a face leaves the frame."""
    from pocketswap.faces import samples
    from pocketswap.faces.analyzer import FaceAnalyzer

    image = samples.load(sample)
    x0, y0, x1, y1 = FaceAnalyzer(detector="auto").detect_one(image, source=sample).box
    crop = int(2.4 * max(x1 - x0, y1 - y0))  # head and shoulders, like a webcam framing
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    padded = cv2.copyMakeBorder(image, crop, crop, crop, crop, cv2.BORDER_REFLECT)
    face = padded[cy + crop // 2 : cy + crop + crop // 2, cx + crop // 2 : cx + crop + crop // 2]
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3), dtype=np.uint8), (0, 0), 6)
    for i in range(frames):
        frame = background.copy()
        if empty_every and i % empty_every in (empty_every - 2, empty_every - 1):
            yield frame
            continue
        phase = 2 * np.pi * i / max(frames, 1)
        side = int(height * (0.7 + 0.15 * np.sin(phase)))
        scaled = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        x = int((width - side) / 2 + 0.2 * (width - side) * np.sin(phase))
        y = int((height - side) / 2 + 0.15 * (height - side) * np.cos(phase))
        frame[y : y + side, x : x + side] = scaled
        yield frame


def write_clip(path: str | Path, fps: float = 24.0, **kwargs) -> Path:
    """Write `synthetic_frames(**kwargs)` as an H.264 .mp4 and return the path."""
    from pocketswap.demo.video import VideoWriter

    with VideoWriter(path, fps, notice=None) as writer:
        for frame in synthetic_frames(**kwargs):
            writer.write(frame)
    return Path(path)


def write_y4m(path: str | Path, frames, fps: int = 24) -> Path:
    """Write RGB frames as a raw YUV4MPEG2 (4:2:0) clip: what Chromium's
    ``--use-file-for-fake-video-capture`` plays as a fake camera (browser tests of ``pocketswap app``)."""
    path = Path(path)
    with path.open("wb") as f:
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            if i == 0:
                f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path
