"""Per-stage latency of the live pipeline on a 640x480 frame: detect, landmarks, align, swap, paste-back.

Stages are timed separately on the same frame (median over many runs, after warm-up), with the
thread count applied to LiteRT, OpenCV and the swap model alike. `total` is the sum of stage
medians for a frame on which the detector runs; `total_tracking` replaces detection + landmarks
by landmark tracking, which is what the demo does on most frames (`--detect-every`). For models
that read the warped identity, `swap` includes warping the identity texture onto the frame's
landmarks, and `warp` is that warp alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from pocketswap.benchmarks.latency import device_name, time_callable
from pocketswap.core.metrics import percentile


@dataclass
class PipelineRecord:
    model: str
    threads: int
    runs: int
    detect_ms: float
    landmarks_ms: float
    track_ms: float
    align_ms: float
    swap_ms: float
    paste_ms: float
    total_ms: float
    total_tracking_ms: float
    fps_detecting: float
    fps_tracking: float
    device: str
    warp_ms: float = 0.0  # identity texture -> frame landmarks (part of swap_ms; 0 for other models)

    def to_dict(self) -> dict:
        return asdict(self)


def benchmark_pipeline(model_path: str, embedding: np.ndarray | None = None, threads: int = 1, runs: int = 200):
    """Time each live-pipeline stage for `model_path` (a baked artifact or checkpoint + embedding)."""
    from pocketswap.demo.settings import PipelineConfig
    from pocketswap.demo.swap_model import load_swap_model
    from pocketswap.faces.align import align_face, paste_back
    from pocketswap.faces.bench import sample_frame
    from pocketswap.faces.blazeface import BlazeFace
    from pocketswap.faces.facemesh import FaceMesh
    from pocketswap.faces.types import Face

    cv2.setNumThreads(threads)
    frame = sample_frame()
    detector, mesh = BlazeFace("short", num_threads=threads), FaceMesh(num_threads=threads)
    model = load_swap_model(model_path, embedding, threads)
    detection = detector(frame)[0]
    landmarks = mesh.from_detection(frame, detection).landmarks
    face = Face(box=detection.box, score=detection.score, landmarks=landmarks)
    aligned = align_face(frame, face.keypoints, model.size, model.template)
    crop_landmarks = aligned.landmarks_in_crop(landmarks) if model.needs_landmarks else None
    swapped, mask = model(aligned.crop, crop_landmarks)
    live = PipelineConfig()  # the live pipeline's paste options
    stages = [
        ("detect", lambda: detector(frame)),
        ("landmarks", lambda: mesh.from_detection(frame, detection)),
        ("track", lambda: mesh.track(frame, landmarks)),
        ("align", lambda: align_face(frame, face.keypoints, model.size, model.template)),
        ("swap", lambda: model(aligned.crop, crop_landmarks)),
        (
            "paste",
            lambda: paste_back(
                frame, swapped, aligned.matrix, mask=mask, match_color=live.color_transfer, keep_detail=live.keep_detail
            ),
        ),  # fmt: skip
    ]
    if model.needs_landmarks:
        from pocketswap.faces.warp import warp_identity

        texture = model.texture
        stages.append(
            (
                "warp",
                lambda: warp_identity(
                    texture.crop, texture.landmarks, crop_landmarks, texture.triangles, texture.shape
                ),
            )
        )
    medians = {name: percentile(time_callable(fn, runs), 50, 6) for name, fn in stages}
    tail = medians["align"] + medians["swap"] + medians["paste"]
    total = medians["detect"] + medians["landmarks"] + tail
    total_tracking = medians["track"] + tail
    return PipelineRecord(
        model=model.name,
        threads=threads,
        runs=runs,
        **{f"{k}_ms": round(v, 3) for k, v in medians.items()},
        total_ms=round(total, 3),
        total_tracking_ms=round(total_tracking, 3),
        fps_detecting=round(1e3 / total, 1),
        fps_tracking=round(1e3 / total_tracking, 1),
        device=device_name(),
    )
