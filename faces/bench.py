"""Latency of the face front-end on a 640x480 frame: detect + landmarks, align (median of many runs)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from pocketswap.core.metrics import percentile


@dataclass
class FaceBenchResult:
    frame: str
    threads: int
    runs: int
    detect_landmarks_ms: float
    align_ms: float
    total_ms: float
    total_p95_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def sample_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """The astronaut sample scaled into a 640x480 frame (face about 130 px wide, like a webcam)."""
    from pocketswap.faces import samples

    face = cv2.resize(samples.load("astronaut"), (height, height), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 90, dtype=np.uint8)
    x = (width - height) // 2
    frame[:, x : x + height] = face
    return frame


def benchmark_face_pipeline(runs: int = 300, threads: int = 1, crop_size: int = 224, detector: str = "short"):
    """Time detection + 468 landmarks and alignment on `sample_frame()`; returns `FaceBenchResult`."""
    from pocketswap.faces.align import align_face
    from pocketswap.faces.analyzer import FaceAnalyzer

    cv2.setNumThreads(threads)
    analyzer = FaceAnalyzer(detector=detector, num_threads=threads)
    frame = sample_frame()
    for _ in range(10):  # warm-up
        align_face(frame, analyzer.detect_one(frame).keypoints, crop_size)
    detect_ms, align_ms = np.empty(runs), np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        face = analyzer.detect_one(frame)
        t1 = time.perf_counter()
        align_face(frame, face.keypoints, crop_size)
        t2 = time.perf_counter()
        detect_ms[i], align_ms[i] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    total = detect_ms + align_ms
    return FaceBenchResult(
        frame="640x480 astronaut",
        threads=threads,
        runs=runs,
        detect_landmarks_ms=percentile(detect_ms, 50, 3),
        align_ms=percentile(align_ms, 50, 3),
        total_ms=percentile(total, 50, 3),
        total_p95_ms=percentile(total, 95, 3),
    )
