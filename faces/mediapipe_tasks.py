"""Optional backend: the ``mediapipe`` package's Tasks API ``FaceLandmarker`` with a user-supplied ``.task`` bundle.

mediapipe >= 1.x ships no model files, so this runs only when the user passes ``face_landmarker.task``
(a zip bundle holding the face detector and landmark models). Results use the same `Face` type as
the LiteRT backend: the 468 FaceMesh points in pixels (the 10 iris points 468..477 are dropped),
z scaled like x, the box is the landmarks' extent. The Tasks API reports no per-face confidence: every
face it returns passed ``min_face_detection_confidence`` and ``min_face_presence_confidence``, so
``score`` is 1.0.

``mediapipe`` is imported only when a bundle is loaded (the import is slow).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from pocketswap.core.errors import ModelSignatureError

from .types import NUM_LANDMARKS, Face

log = logging.getLogger(__name__)


def landmarks_box(landmarks: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 extent of ``(N, 2+)`` landmarks."""
    xy = landmarks[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float32)


def check_task_file(task_file: str | Path) -> Path:
    """Validate that ``task_file`` looks like a MediaPipe ``.task`` bundle, raising `ModelSignatureError`."""
    path = Path(task_file).expanduser()
    if not path.exists():
        raise ModelSignatureError(f"{path}: no such file (expected a MediaPipe face_landmarker.task bundle)")
    if not path.is_file():
        raise ModelSignatureError(f"{path}: is not a file (expected a MediaPipe face_landmarker.task bundle)")
    if path.stat().st_size == 0:
        raise ModelSignatureError(f"{path}: file is empty (expected a MediaPipe face_landmarker.task bundle)")
    try:
        with zipfile.ZipFile(path) as bundle:
            members = bundle.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelSignatureError(
            f"{path}: not a MediaPipe .task bundle (a .task file is a zip of .tflite models; {exc})"
        ) from exc
    if not any(name.endswith(".tflite") for name in members):
        raise ModelSignatureError(f"{path}: the .task bundle holds no .tflite model (found: {', '.join(members)})")
    return path


class TasksFaceLandmarker:
    """MediaPipe Tasks ``FaceLandmarker`` (image mode) producing `Face` objects."""

    def __init__(
        self, task_file: str | Path, min_score: float = 0.5, min_presence: float = 0.5, max_faces: int = 4
    ) -> None:
        self.path = check_task_file(task_file)
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision import FaceLandmarker, FaceLandmarkerOptions, RunningMode

        options = FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.path)),
            running_mode=RunningMode.IMAGE,
            num_faces=int(max_faces),
            min_face_detection_confidence=float(min_score),
            min_face_presence_confidence=float(min_presence),
            min_tracking_confidence=float(min_presence),
        )
        try:
            self._landmarker = FaceLandmarker.create_from_options(options)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelSignatureError(
                f"{self.path}: MediaPipe cannot load this face landmarker bundle ({exc})"
            ) from exc

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces in an HxWx3 uint8 RGB image (in the order MediaPipe returns them)."""
        import mediapipe as mp

        h, w = image_rgb.shape[:2]
        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image_rgb))
        faces = []
        for points in result.face_landmarks:
            if len(points) < NUM_LANDMARKS:
                raise ModelSignatureError(f"{self.path}: the bundle returned {len(points)} landmarks, need 468")
            xyz = np.array([(p.x, p.y, p.z) for p in points[:NUM_LANDMARKS]], np.float32)
            # Normalised -> OpenCV pixel coordinates (pixel i centred on i); z uses the x scale.
            landmarks = xyz * np.array([w, h, w], np.float32) - np.array([0.5, 0.5, 0.0], np.float32)
            faces.append(Face(box=landmarks_box(landmarks), score=1.0, landmarks=landmarks))
        return faces

    def close(self) -> None:
        self._landmarker.close()
