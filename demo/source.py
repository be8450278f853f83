"""Frame sources for the demo: a webcam (threaded, stale frames dropped), a video file, an image."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from pocketswap.core.errors import ImageReadError, PocketswapError
from pocketswap.core.imageio import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from pocketswap.faces.samples import SAMPLE_PREFIX

log = logging.getLogger(__name__)


def is_still(spec: str) -> bool:
    """True when a ``--source`` names one image (a file with an image suffix, or ``sample:NAME``)."""
    return spec.startswith(SAMPLE_PREFIX) or Path(spec).suffix.lower() in IMAGE_SUFFIXES


def upload_label(name: str | None, kind: str = "video") -> str:
    """How a message names an uploaded file: its own (sanitised, bounded) name, never the server's copy."""
    safe = "".join(c if c.isalnum() or c in "-_. " else "_" for c in Path(name or "").name)[:80].strip()
    return f"the uploaded {kind} {safe}" if safe else f"the uploaded {kind}"


class CameraError(PocketswapError):
    """A camera could not be opened or stopped delivering frames."""


class CameraSource:
    """Reads a camera on a background thread and keeps only the newest frame, so a slow model
    never builds up a queue of old frames (latency stays one frame, frames are dropped instead)."""

    def __init__(self, index: int, width: int = 640, height: int = 480) -> None:
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise CameraError(
                f"cannot open camera {index} (/dev/video{index}); check it is connected and not in use, "
                "or run on a file with --source video.mp4"
            )
        self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 30.0
        self._frame: np.ndarray | None = None
        self._serial = 0
        self._lock = threading.Condition()
        self._running = True
        self.dropped = 0
        self._thread = threading.Thread(target=self._reader, name="camera", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while self._running:
            ok, frame = self.capture.read()
            if not ok:
                time.sleep(0.005)
                continue
            with self._lock:
                if self._frame is not None:
                    self.dropped += 1
                self._frame = frame
                self._serial += 1
                self._lock.notify()

    def __iter__(self) -> Iterator[np.ndarray]:
        last = 0
        while self._running:
            with self._lock:
                if not self._lock.wait_for(lambda seen=last: self._serial != seen, timeout=2.0):
                    raise CameraError("the camera stopped delivering frames")
                frame, last, self._frame = self._frame, self._serial, None
            if frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=1.0)
        self.capture.release()


class VideoSource:
    """Every frame of a video file, in order. ``realtime`` (windows): frames come at the file's own
    frame rate and the last one is held until the window closes, instead of decode speed and exit.
    ``name``: how messages call the file (an upload's own name, not the server's temporary copy)."""

    def __init__(self, path: Path, realtime: bool = False, name: str | None = None) -> None:
        self.name = name or str(path)
        if not path.exists():
            raise ImageReadError(f"{self.name}: no such file")
        if not path.is_file():
            raise ImageReadError(f"{self.name}: not a regular file (a folder, pipe or device); give a video file")
        self.path = path
        self.capture = cv2.VideoCapture(str(path))
        width, height = (int(self.capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > MAX_IMAGE_PIXELS:
            self.capture.release()
            raise ImageReadError(f"{self.name}: video frames of {width}x{height} px are over the size limit")
        ok, first = self.capture.read()
        if not self.capture.isOpened() or not ok:
            self.capture.release()
            raise ImageReadError(f"{self.name}: not a video OpenCV can decode")
        if min(first.shape[:2]) < MIN_IMAGE_SIDE:
            self.capture.release()
            raise ImageReadError(f"{self.name}: video frames of {first.shape[1]}x{first.shape[0]} px are too small "
                                 f"(need at least {MIN_IMAGE_SIDE} px a side)")  # fmt: skip
        self._first: np.ndarray | None = first
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 25.0
        # The video stream's own length. OpenCV's count falls back on the container's duration, which an
        # audio track longer than the picture stretches: it would promise frames that were never there.
        counted = video_frame_count(path, self.fps)
        self.frame_count_exact = counted is not None
        self.frame_count = counted if counted is not None else max(int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.realtime = realtime
        self.dropped = 0

    def _decoded(self) -> Iterator[np.ndarray]:
        if self._first is not None:
            yield cv2.cvtColor(self._first, cv2.COLOR_BGR2RGB)
            self._first = None
        read = 1
        while True:
            ok, frame = self.capture.read()
            if not ok:
                # A corrupt or cut stretch ends the video early; said only where the stream's own length is known.
                if self.frame_count_exact and read < self.frame_count - 1:
                    log.warning("%s: decoding stopped at frame %d of %d (the rest is unreadable)", self.name, read,
                                self.frame_count)  # fmt: skip
                return
            read += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from paced(self._held(), self.fps) if self.realtime else self._decoded()

    def _held(self) -> Iterator[np.ndarray]:
        last = None
        for last in self._decoded():
            yield last
        if last is not None:
            yield from itertools.repeat(last)

    def close(self) -> None:
        self.capture.release()


def video_frame_count(path: Path, fps: float) -> int | None:
    """Frames of ``path``'s first video stream from the stream itself (its frame count, else its own
    duration: a Matroska/WebM ``DURATION`` tag included) times ``fps``; None when only the container's
    duration, which includes every other track, would say."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            seconds = None
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif tag := stream.metadata.get("DURATION") or stream.metadata.get("duration"):  # HH:MM:SS.fraction
                seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(tag.split(":")[-3:])))
    except (OSError, ValueError, av.error.FFmpegError):
        return None
    return round(seconds * fps) if seconds and seconds > 0 else None


def paced(frames: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """Yield ``frames`` no faster than ``fps`` (a late frame is not made up for by rushing the next)."""
    period = 1.0 / max(fps, 1e-3)
    due = time.perf_counter()
    for frame in frames:
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        due = max(due + period, time.perf_counter())
        yield frame


class ImageSource:
    """A still image: once (headless), or repeated like a static camera so a window stays interactive."""

    def __init__(self, path: Path | str, repeat: bool = False) -> None:
        from pocketswap.faces.samples import load_image_or_sample

        self.image = load_image_or_sample(str(path))
        self.repeat = repeat
        self.fps = 30.0 if repeat else 1.0
        self.dropped = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.image
        if self.repeat:
            yield from paced(itertools.repeat(self.image), self.fps)

    def close(self) -> None:
        pass


def open_source(spec: str, interactive: bool = False) -> CameraSource | VideoSource | ImageSource:
    """``0``/``1``... for a camera, an image path or ``sample:NAME``, or a video path. `interactive`
    repeats a still image until the window is closed."""
    if spec.isdigit():
        return CameraSource(int(spec))
    if is_still(spec):
        return ImageSource(spec, repeat=interactive)
    path = Path(spec)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, repeat=interactive)
    return VideoSource(path, realtime=interactive)
