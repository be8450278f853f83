"""The `Face` result shared by every detection backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FaceMesh (468-point) indices. "Right"/"left" are the subject's; in an unmirrored photo the
# subject's right eye is on the image's left, which is the ArcFace template's first point.
RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1
MOUTH_RIGHT_CORNER = 61
MOUTH_LEFT_CORNER = 291
MOUTH_CORNERS = (MOUTH_RIGHT_CORNER, MOUTH_LEFT_CORNER)
# Outer lip contour, in order.
OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
# Inner lip contour, in order: the mouth's opening (teeth, tongue).
INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
NUM_LANDMARKS = 468
# The 5 ArcFace-order keypoints, each the mean of these landmarks: image-left eye centre, image-right eye
# centre, nose tip, image-left mouth corner, image-right mouth corner.
KEYPOINT_GROUPS = (RIGHT_EYE_RING, LEFT_EYE_RING, (NOSE_TIP,), (MOUTH_RIGHT_CORNER,), (MOUTH_LEFT_CORNER,))


def keypoints_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) float32 ArcFace-order keypoints from (468, 2+) FaceMesh landmarks: image-left eye centre,
    image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner."""
    xy = np.asarray(landmarks, dtype=np.float32)[:, :2]
    return np.stack([xy[list(group)].mean(0) for group in KEYPOINT_GROUPS]).astype(np.float32)


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance between the two eye centres (means of the FaceMesh eye rings) of (468, 2+) landmarks."""
    xy = np.asarray(landmarks, np.float64)[:, :2]
    return float(np.linalg.norm(xy[list(RIGHT_EYE_RING)].mean(0) - xy[list(LEFT_EYE_RING)].mean(0)))


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    box: (4,) float32 x0, y0, x1, y1. score: detection confidence in [0, 1].
    landmarks: (468, 3) float32 FaceMesh points, x and y in pixels, z in pixels relative to the
    face centre (smaller is closer to the camera).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        if self.landmarks.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"landmarks must be ({NUM_LANDMARKS}, 3), got {self.landmarks.shape}")

    @property
    def keypoints(self) -> np.ndarray:
        """(5, 2) float32 in ArcFace order (see `keypoints_from_landmarks`)."""
        return keypoints_from_landmarks(self.landmarks)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "keypoints": np.round(self.keypoints, 2).tolist(),
            "landmarks": np.round(self.landmarks, 2).tolist(),
        }
