"""MediaPipe FaceMesh (468 3-D landmarks + face presence) run with LiteRT.

Follows MediaPipe's ``face_landmark_front_cpu`` graphs:

- ROI: the detection box (or, when tracking, the previous landmarks' bounding box), rotated so the
  eye line (detection keypoints 0 -> 1, or mesh points 33 -> 263) is horizontal, made square on its
  long side and enlarged 1.5x;
- input: the ROI warped to 192x192 (bilinear, replicated border), RGB scaled to [0, 1];
- outputs: ``(1, 1, 1, 1404)`` = 468 (x, y, z) in crop pixels, ``(1, 1, 1, 1)`` face-presence logit
  (sigmoid; the face is lost below 0.5);
- landmarks are projected back through the ROI; z is scaled like x (pixels, relative to the face).

Pixel coordinates follow OpenCV's convention (pixel ``i`` is centred on ``i``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from pocketswap.core.errors import ModelSignatureError

from .blazeface import Detection, make_interpreter, model_path

log = logging.getLogger(__name__)

MODEL_FILE = "face_landmark.tflite"
INPUT_SIZE = 192
NUM_LANDMARKS = 468
ROI_SCALE = 1.5
# Eye-line points MediaPipe uses for the tracking ROI's rotation (outer corners of the eyes).
TRACK_ROTATION_START, TRACK_ROTATION_END = 33, 263


@dataclass(frozen=True)
class Roi:
    """A rotated square region: centre (x, y) px, side px, angle in radians (clockwise in the image)."""

    cx: float
    cy: float
    size: float
    angle: float

    def rotation(self) -> np.ndarray:
        """(2, 2) matrix whose columns are the crop's x and y axes in the image."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]], np.float64)

    def image_to_crop(self, out_size: int = INPUT_SIZE) -> np.ndarray:
        """(2, 3) affine matrix mapping image pixels to crop pixels (for ``cv2.warpAffine``)."""
        k = out_size / self.size
        linear = self.rotation().T * k
        offset = (out_size - 1) / 2.0 - linear @ np.array([self.cx, self.cy])
        return np.hstack([linear, offset[:, None]])

    def crop_to_image(self, points: np.ndarray, out_size: int = INPUT_SIZE) -> np.ndarray:
        """Map ``(N, 3)`` model outputs (continuous crop coordinates, z like x) to image pixels."""
        k = self.size / out_size
        c, s = math.cos(self.angle) * k, math.sin(self.angle) * k
        half = out_size / 2.0
        # x' = c (x - half) - s (y - half) + cx, y' = s (x - half) + c (y - half) + cy, z' = k z,
        # written for row vectors: points @ affine + shift.
        affine = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, k]], np.float32)
        shift = np.array([self.cx - half * (c - s), self.cy - half * (s + c), 0.0], np.float32)
        return points.astype(np.float32, copy=False) @ affine + shift


def _normalize_angle(angle: float) -> float:
    return angle - 2.0 * math.pi * math.floor((angle + math.pi) / (2.0 * math.pi))


def _square_roi(x0: float, y0: float, x1: float, y1: float, start: np.ndarray, end: np.ndarray, scale: float) -> Roi:
    angle = _normalize_angle(math.atan2(float(end[1] - start[1]), float(end[0] - start[0])))
    return Roi((x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * scale, angle)


def roi_from_detection(detection: Detection, scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's detection-to-ROI: box centre, rotation from the eye keypoints, long side x ``scale``."""
    x0, y0, x1, y1 = (float(v) for v in detection.box)
    return _square_roi(x0, y0, x1, y1, detection.keypoints[0], detection.keypoints[1], scale)


def roi_from_landmarks(landmarks: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's landmarks-to-ROI (tracking): landmark bounding box, rotation from points 33 -> 263."""
    xy = landmarks[:, :2]
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    return _square_roi(
        float(x0), float(y0), float(x1), float(y1), xy[TRACK_ROTATION_START], xy[TRACK_ROTATION_END], scale
    )


@dataclass(frozen=True)
class MeshResult:
    """FaceMesh output: ``landmarks`` (468, 3) float32 image pixels, ``presence`` in [0, 1], the ROI used."""

    landmarks: np.ndarray
    presence: float
    roi: Roi


class FaceMesh:
    """The 468-point FaceMesh model. The interpreter and buffers are created once and reused."""

    def __init__(self, num_threads: int = 1, min_presence: float = 0.5) -> None:
        self.min_presence = float(min_presence)
        path = model_path(MODEL_FILE)
        self._interpreter = make_interpreter(path, num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        shape = (1, INPUT_SIZE, INPUT_SIZE, 3)
        if len(inputs) != 1 or tuple(inputs[0]["shape"]) != shape or inputs[0]["dtype"] != np.float32:
            raise ModelSignatureError(f"{path}: expected one float32 {shape} input, got {inputs}")
        sizes = {int(np.prod(o["shape"])): o["index"] for o in outputs}
        if NUM_LANDMARKS * 3 not in sizes or 1 not in sizes:
            raise ModelSignatureError(f"{path}: expected a 1404-value landmark output and a 1-value face flag")
        self._input_index = inputs[0]["index"]
        self._landmarks_index = sizes[NUM_LANDMARKS * 3]
        self._presence_index = sizes[1]
        self._crop = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        self._tensor = np.zeros(shape, np.float32)

    def crop(self, image_rgb: np.ndarray, roi: Roi) -> np.ndarray:
        """The 192x192 uint8 model input for ``roi`` (a reused buffer: copy it to keep it)."""
        cv2.warpAffine(
            image_rgb,
            roi.image_to_crop(),
            (INPUT_SIZE, INPUT_SIZE),
            dst=self._crop,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return self._crop

    def run(self, image_rgb: np.ndarray, roi: Roi) -> MeshResult:
        """Landmarks and face-presence score for one ROI of an HxWx3 uint8 RGB image."""
        np.multiply(self.crop(image_rgb, roi), np.float32(1.0 / 255.0), out=self._tensor[0], casting="unsafe")
        interpreter = self._interpreter
        interpreter.set_tensor(self._input_index, self._tensor)
        interpreter.invoke()
        raw = interpreter.get_tensor(self._landmarks_index).reshape(NUM_LANDMARKS, 3)
        logit = float(np.clip(interpreter.get_tensor(self._presence_index).reshape(()), -80.0, 80.0))
        presence = 1.0 / (1.0 + math.exp(-logit))
        return MeshResult(roi.crop_to_image(raw), presence, roi)

    def from_detection(self, image_rgb: np.ndarray, detection: Detection) -> MeshResult | None:
        """Landmarks for a BlazeFace detection; None when the mesh finds no face there."""
        result = self.run(image_rgb, roi_from_detection(detection))
        if result.presence < self.min_presence:
            log.debug("FaceMesh rejected detection %s (presence %.3f)", detection.box, result.presence)
            return None
        return result

    def track(self, image_rgb: np.ndarray, previous_landmarks: np.ndarray) -> MeshResult | None:
        """Landmarks from the ROI of the previous frame's landmarks; None when the face is lost."""
        result = self.run(image_rgb, roi_from_landmarks(np.asarray(previous_landmarks, np.float32)))
        if result.presence < self.min_presence:
            log.debug("FaceMesh lost the face (presence %.3f)", result.presence)
            return None
        return result
