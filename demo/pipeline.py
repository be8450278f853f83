"""The live swap pipeline, per frame: detect (every N frames) or track -> smooth -> align -> swap -> paste back.

`LiveSwapper.process(frame, t)` is all the demo, the video writer and the pipeline benchmark call.
It keeps per-stage timings so the overlay and the headless summary show where time goes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pocketswap.demo.settings import PipelineConfig
from pocketswap.demo.swap_model import SwapModel
from pocketswap.faces.align import align_face, frame_kept, paste_back
from pocketswap.faces.analyzer import FaceAnalyzer
from pocketswap.faces.smoothing import OneEuroFilter
from pocketswap.faces.types import Face

STAGES = ("detect", "track", "align", "swap", "paste")


@dataclass
class FrameResult:
    frame: np.ndarray
    faces: list[Face]
    timings_ms: dict[str, float]
    crops: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (swapped crop, mask) per face
    inputs: list[np.ndarray] = field(default_factory=list)  # the aligned input crop per face


class LiveSwapper:
    """Stateful per-frame face swapper (keeps the tracked faces and their smoothing filters)."""

    def __init__(self, model: SwapModel, analyzer: FaceAnalyzer, config: PipelineConfig | None = None) -> None:
        self.model, self.analyzer = model, analyzer
        self.config = config or PipelineConfig()
        self.frame_index = 0
        self.faces: list[Face] = []
        self.filters: list[OneEuroFilter] = []
        self.totals_ms: dict[str, float] = defaultdict(float)
        self.frames = 0

    @property
    def _match(self) -> bool:
        """Whether the paste matches the swap's colour to the frame (not for a model that relights its own)."""
        return not getattr(self.model, "matches_colour", False)

    def set_model(self, model: SwapModel) -> None:
        """Switch identity (a model baked for another face) without losing tracking."""
        self.model = model

    def _locate(self, frame: np.ndarray, timings: dict[str, float]) -> list[Face]:
        start = time.perf_counter()
        due = self.frame_index % max(1, self.config.detect_every) == 0
        tracked = [] if due else [self.analyzer.track(frame, face) for face in self.faces]
        if due or not tracked or any(face is None for face in tracked):
            faces = self.analyzer.detect(frame, all_faces=self.config.all_faces)
            timings["detect"] = (time.perf_counter() - start) * 1e3
            if len(faces) != len(self.filters):
                self.filters = [self._new_filter() for _ in faces]
        else:
            faces = [face for face in tracked if face is not None]
            timings["track"] = (time.perf_counter() - start) * 1e3
        return faces

    def _new_filter(self) -> OneEuroFilter:
        return OneEuroFilter(self.config.min_cutoff, self.config.beta)

    def process(self, frame: np.ndarray, t: float | None = None) -> FrameResult:
        """Swap the face(s) in one RGB frame; frames without a face pass through unchanged."""
        t = time.perf_counter() if t is None else t
        timings: dict[str, float] = {}
        raw_faces = self._locate(frame, timings)
        self.faces = raw_faces
        smoothed = [
            Face(box=face.box, score=face.score, landmarks=flt(face.landmarks, t))
            for face, flt in zip(raw_faces, self.filters, strict=False)
        ]
        out, crops, inputs = frame, [], []
        for face in smoothed if self.config.swap else []:
            start = time.perf_counter()
            aligned = align_face(frame, face.keypoints, self.model.size, self.model.template)
            in_crop = aligned.landmarks_in_crop(face.landmarks)
            t1 = time.perf_counter()
            swapped, mask = self.model(aligned.crop, in_crop if self.model.needs_landmarks else None)
            t2 = time.perf_counter()
            kept = frame_kept(in_crop, self.model.size) if self.config.keep_mouth else None
            out = paste_back(
                out, swapped, aligned.matrix, mask=mask, match_color=self.config.color_transfer and self._match,
                keep_detail=self.config.keep_detail, kept=kept,
            )  # fmt: skip
            t3 = time.perf_counter()
            for stage, ms in (("align", t1 - start), ("swap", t2 - t1), ("paste", t3 - t2)):
                timings[stage] = timings.get(stage, 0.0) + ms * 1e3
            crops.append((swapped, mask))
            inputs.append(aligned.crop)
        self.frame_index += 1
        self.frames += 1
        for stage, ms in timings.items():
            self.totals_ms[stage] += ms
        return FrameResult(frame=out, faces=smoothed, timings_ms=timings, crops=crops, inputs=inputs)
