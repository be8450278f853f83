"""The identity's face shape on another face's landmarks: the one definition the teacher's warp and the
students' warped-identity input share (``transfer_shape``)."""

from __future__ import annotations

import cv2
import numpy as np

from pocketswap.faces.align import similarity_transform, transform_points
from pocketswap.faces.raster import polygon_distances
from pocketswap.faces.types import LEFT_EYE_RING, MOUTH_CORNERS, OUTER_LIP, RIGHT_EYE_RING

# Features that carry the expression (mouth opening, blinks): under shape transfer each moves as one rigid
# piece, by the similarity that takes its two corners to the identity's, so the identity gives their place,
# size and tilt and the attribute their shape. A piece is every landmark within its contour grown by a share
# of its width (the lips' inner rings, the lids and creases around an eye). (contour, its two corners, growth,
# moves): the mouth does not move, so the frame's teeth and tongue stay where the frame has them and a student
# can keep them by taking the frame's own pixels (a moved mouth left students a target that no input held, and
# they smeared lips over the teeth on half of people-dev's open mouths).
RIGID_FEATURES = (
    (OUTER_LIP, MOUTH_CORNERS, 0.1, False),
    (RIGHT_EYE_RING, (33, 133), 0.35, True),
    (LEFT_EYE_RING, (362, 263), 0.35, True),
)


def rigid_piece(points: np.ndarray, contour: tuple[int, ...], corners: tuple[int, int], grow: float) -> np.ndarray:
    """Indices of the landmarks within ``contour`` grown by ``grow`` of its corner-to-corner width."""
    polygon = points[list(contour)]
    reach = grow * float(np.linalg.norm(points[corners[0]] - points[corners[1]]))
    return np.flatnonzero(
        polygon_distances(points, polygon, beyond=reach) >= -reach
    )  # the contour's own points: distance 0


def two_point_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity that maps the two points ``src`` exactly onto ``dst``."""
    a, b = complex(*(src[1] - src[0])), complex(*(dst[1] - dst[0]))
    z = b / a if abs(a) > 1e-9 else 1.0
    linear = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.hstack([linear, (dst[0] - linear @ src[0])[:, None]])


def transfer_shape(identity: np.ndarray, attribute: np.ndarray, amount: float) -> np.ndarray:
    """Attribute landmarks with their inner features moved ``amount`` of the way to the identity's shape
    (identity similarity-aligned to the attribute first; the face outline is left in place; mouth and eyes
    move rigidly, keeping the attribute's expression: see RIGID_FEATURES). ``amount`` 0 returns the
    attribute's landmarks unchanged."""
    attribute = np.asarray(attribute, np.float64)[:, :2]
    if amount == 0:
        return attribute.astype(np.float32)
    identity = np.asarray(identity, np.float64)[:, :2]
    target = transform_points(identity, similarity_transform(identity, attribute)).astype(np.float64)
    for contour, corners, grow, moves in RIGID_FEATURES:
        group = rigid_piece(attribute, contour, corners, grow)
        if not moves:  # the piece keeps the attribute's place
            target[group] = attribute[group]
            continue
        piece = two_point_similarity(attribute[list(corners)], target[list(corners)])
        target[group] = attribute[group] @ piece[:, :2].T + piece[:, 2]
    weights = np.full(len(attribute), amount)
    weights[cv2.convexHull(attribute.astype(np.float32), returnPoints=False).ravel()] = 0.0
    return (attribute + weights[:, None] * (target - attribute)).astype(np.float32)
