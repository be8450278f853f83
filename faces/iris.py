"""Gaze from MediaPipe's iris model (``iris_landmark.tflite``, shipped with the FaceMesh models).

Each eye is cut out around its two corners (FaceMesh points 33/133 and 362/263) as a square
2.3 eye-widths wide, turned so the corners lie level, 64x64 RGB in [0, 1] (the right eye mirrored,
as the model was trained on left eyes). The model returns 71 eye-contour points and 5 iris points;
the first iris point is the pupil centre. :func:`gaze_offsets` gives the pupil's position relative
to the eye's corners, in eye widths, along the eye (x) and across it (y): where the person looks,
independent of the face's size and roll.
"""

from __future__ import annotations

import cv2
import numpy as np

from pocketswap.faces.blazeface import make_interpreter, model_path

IRIS_MODEL = "iris_landmark.tflite"
EYE_CORNERS = ((33, 133), (362, 263))  # (outer, inner) corner of the left and the right eye in FaceMesh
ROI_SCALE = 2.3  # crop side in eye widths (MediaPipe's iris graph)
INPUT_SIZE = 64


class IrisModel:
    """The pupil centre of each eye from a frame and its 468 FaceMesh landmarks (frame pixels)."""

    def __init__(self, num_threads: int = 1) -> None:
        self.interpreter = make_interpreter(model_path(IRIS_MODEL), num_threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda d: int(np.prod(d["shape"])))
        self.iris = outputs[0]["index"]  # 5 x 3 (the contour output is 71 x 3)

    def pupils(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(2, 2) pupil centres (left eye, right eye) in frame pixels."""
        centres = []
        for index, (outer, inner) in enumerate(EYE_CORNERS):
            matrix = _eye_matrix(landmarks[outer, :2], landmarks[inner, :2], mirror=index == 1)
            crop = cv2.warpAffine(image, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
            self.interpreter.set_tensor(self.input, (crop.astype(np.float32) / 255.0)[None])
            self.interpreter.invoke()
            pupil = self.interpreter.get_tensor(self.iris).reshape(-1, 3)[0, :2]
            inverse = cv2.invertAffineTransform(matrix)
            centres.append(inverse[:, :2] @ pupil + inverse[:, 2])
        return np.asarray(centres, np.float64)


def _eye_matrix(outer: np.ndarray, inner: np.ndarray, mirror: bool) -> np.ndarray:
    """2x3 affine from the frame to the 64x64 eye crop (corners level; mirrored for the right eye)."""
    centre = (outer + inner) / 2.0
    axis = inner - outer
    width = max(float(np.hypot(*axis)), 1e-6)
    angle = np.arctan2(axis[1], axis[0])
    scale = INPUT_SIZE / (ROI_SCALE * width)
    cos, sin = np.cos(-angle) * scale, np.sin(-angle) * scale
    rotate = np.array([[cos, -sin], [sin, cos]])
    if mirror:
        rotate = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rotate
    offset = INPUT_SIZE / 2.0 - rotate @ centre
    return np.hstack([rotate, offset[:, None]]).astype(np.float64)


def gaze_offsets(pupils: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(2, 2): each pupil's offset from its eye's centre, in eye widths, along and across the eye."""
    offsets = []
    for pupil, (outer, inner) in zip(pupils, EYE_CORNERS, strict=True):
        a, b = landmarks[outer, :2].astype(np.float64), landmarks[inner, :2].astype(np.float64)
        axis = b - a
        width = max(float(np.hypot(*axis)), 1e-6)
        along = axis / width
        across = np.array([-along[1], along[0]])
        rel = (pupil - (a + b) / 2.0) / width
        offsets.append([float(rel @ along), float(rel @ across)])
    return np.asarray(offsets)
