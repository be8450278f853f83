"""Drawing detections for inspection (annotated images from `pocketswap faces detect`)."""

from __future__ import annotations

import cv2
import numpy as np

from pocketswap.faces.types import Face

KEYPOINT_COLOURS = ((255, 64, 64), (64, 64, 255), (64, 255, 64), (255, 200, 0), (255, 0, 255))


def annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """Return a copy of `image` with each face's box, 468 landmarks and 5 keypoints drawn."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for face in faces:
        x0, y0, x1, y1 = np.round(face.box).astype(int)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), thickness)
        cv2.putText(out, f"{face.score:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        points = np.round(face.landmarks[:, :2]).astype(int)
        out[points[:, 1].clip(0, out.shape[0] - 1), points[:, 0].clip(0, out.shape[1] - 1)] = (0, 220, 255)
        for (x, y), colour in zip(np.round(face.keypoints).astype(int), KEYPOINT_COLOURS, strict=True):
            cv2.circle(out, (int(x), int(y)), 2 * thickness + 1, colour, -1)
    return out
