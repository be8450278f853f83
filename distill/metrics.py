"""Face-swap quality metrics on uint8 RGB crops and FaceMesh landmarks (numpy; reusable by the
benchmarks stage on any folder of aligned faces; PSNR and SSIM are in :mod:`pocketswap.core.metrics`).

- :class:`IdentityScorer`: dlib embeddings of ArcFace-aligned crops (warped to dlib's 150 px chip);
  :func:`cosine`, :func:`retrieval_top1`.
- :func:`detect_crop_landmarks`: FaceMesh landmarks of a tight crop (placed on a larger canvas so
  the detector sees a whole head).
- :func:`expression_error`: landmark distance after similarity alignment / inter-ocular distance (all
  468 points: the face's shape as well as its expression).
- :func:`expression_state`: the expression alone, as ratios no face shape sets (mouth and eye opening,
  smile); :func:`expression_state_error`.
- :func:`head_pose`: yaw, pitch, roll (degrees) from 6 landmarks with ``cv2.solvePnP`` and a
  generic 3-D face; :func:`pose_error`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pocketswap.core.metrics import cosine_distance, same_person
from pocketswap.faces.align import similarity_transform, template_points, transform_points
from pocketswap.faces.types import LEFT_EYE_RING, RIGHT_EYE_RING, inter_ocular


# -- identity ------------------------------------------------------------------------------------
class IdentityScorer:
    """dlib 128-d embeddings of aligned crops (default: the ArcFace template of the crop's size)."""

    def __init__(self, encoder: object | None = None, template: str = "arcface") -> None:
        if encoder is None:
            from pocketswap.faces.dlib_resnet import DlibEncoder

            encoder = DlibEncoder()
        self.encoder = encoder
        self.template = template

    def chips(self, crops: np.ndarray) -> np.ndarray:
        """(B,S,S,3) aligned crops -> (B,chip,chip,3) encoder chips."""
        crops = np.asarray(crops)
        size, chip = crops.shape[1], self.encoder.chip_size  # type: ignore[attr-defined]
        if size == chip and self.template == self.encoder.template:  # type: ignore[attr-defined]
            return crops
        matrix = similarity_transform(
            template_points(size, self.template),
            template_points(chip, self.encoder.template),  # type: ignore[attr-defined]
        )
        return np.stack(
            [
                cv2.warpAffine(c, matrix, (chip, chip), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                for c in crops
            ]
        )

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(B,S,S,3) uint8 aligned crops -> (B,128) L2-normalised embeddings."""
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        return self.encoder.embed_chips(self.chips(crops))  # type: ignore[attr-defined]


def identity_gallery(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """One L2-normalised mean embedding per label, labels sorted."""
    names = sorted(set(labels))
    labels_arr = np.asarray(labels)
    rows = [np.asarray(embeddings, np.float64)[labels_arr == n].mean(0) for n in names]
    gallery = np.stack(rows) if rows else np.zeros((0, np.shape(embeddings)[-1]))
    return gallery / np.maximum(np.linalg.norm(gallery, axis=-1, keepdims=True), 1e-12), names


def retrieval_top1(
    queries: np.ndarray, labels: Sequence[str], gallery: np.ndarray, gallery_labels: Sequence[str]
) -> float:
    """Share of queries whose most similar gallery embedding has their label."""
    if len(queries) == 0:
        return float("nan")
    q = np.asarray(queries, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    best = np.argmax(q @ np.asarray(gallery, np.float64).T, axis=1)
    return float(np.mean([gallery_labels[i] == label for i, label in zip(best, labels, strict=True)]))


def identity_distances(swaps: np.ndarray, inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per swap, the cosine distance (1 - cos) of the swapped face and of the unswapped input to the
    identity's embedding (rows of (N, D) arrays)."""
    return cosine_distance(swaps, targets), cosine_distance(inputs, targets)


def identity_transfer(
    swaps: np.ndarray, inputs: np.ndarray, targets: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """FaceForensics++-style identity figures of N swaps: mean distance to the identity, the share
    judged the same person (distance < ``threshold``, default: the dlib encoder's documented
    same-person threshold, as in ``pocketswap faces compare``) and the share moved closer to the
    identity than the input was."""
    from pocketswap.faces.identity import same_person_threshold

    threshold = same_person_threshold() if threshold is None else threshold
    swap_d, input_d = identity_distances(swaps, inputs, targets)
    if len(swap_d) == 0:
        return {"id_distance": float("nan"), "same_person": float("nan"), "moved_closer": float("nan")}
    return {
        "id_distance": float(swap_d.mean()),
        "same_person": float(same_person(swap_d, threshold).mean()),
        "moved_closer": float((swap_d < input_d).mean()),
    }


# -- landmarks: detection, expression, pose ------------------------------------------------------
def detect_crop_landmarks(analyzer: object, crop: np.ndarray, pad: float = 0.5) -> np.ndarray | None:
    """(468, 3) FaceMesh landmarks of an aligned crop in crop pixels, or None if no face is found.

    The crop is centred on a grey canvas ``1 + 2 * pad`` times its size (tight crops cut the
    head, which the short-range detector needs to see)."""
    size = crop.shape[0]
    border = int(round(pad * size))
    canvas = cv2.copyMakeBorder(crop, border, border, border, border, cv2.BORDER_CONSTANT, value=(127, 127, 127))
    faces = analyzer.detect(canvas)  # type: ignore[attr-defined]
    if not faces:
        return None
    landmarks = faces[0].landmarks.astype(np.float32).copy()
    landmarks[:, :2] -= border
    return landmarks


def expression_error(landmarks: np.ndarray, reference: np.ndarray) -> float:
    """Mean landmark distance after a least-squares similarity alignment of ``landmarks`` onto
    ``reference`` (x, y only), divided by the reference's inter-ocular distance."""
    src, dst = np.asarray(landmarks)[:, :2], np.asarray(reference)[:, :2]
    aligned = transform_points(src, similarity_transform(src, dst))
    return float(np.linalg.norm(aligned - dst, axis=1).mean() / max(inter_ocular(reference), 1e-6))


# (upper lid, lower lid, outer corner, inner corner) of each eye; the mouth's inner-lip centres and corners
EYE_LIDS = ((159, 145, 33, 133), (386, 374, 263, 362))
MOUTH_POINTS = (13, 14, 61, 291)


def expression_state(landmarks: np.ndarray) -> np.ndarray:
    """(4,) the expression of a face's 468 landmarks as ratios its shape does not set: mouth opening /
    mouth width, each eye's opening / its width, and the smile (mouth corners' lift above the lips'
    centre, along the face's own vertical / mouth width)."""
    xy = np.asarray(landmarks, np.float64)[:, :2]
    upper, lower, right, left = (xy[i] for i in MOUTH_POINTS)
    width = max(float(np.linalg.norm(left - right)), 1e-6)
    across = xy[list(LEFT_EYE_RING)].mean(0) - xy[list(RIGHT_EYE_RING)].mean(0)
    down = np.array([-across[1], across[0]]) / max(float(np.linalg.norm(across)), 1e-6)  # image y grows down
    eyes = [np.linalg.norm(xy[top] - xy[bottom]) / max(np.linalg.norm(xy[a] - xy[b]), 1e-6)
            for top, bottom, a, b in EYE_LIDS]  # fmt: skip
    smile = float(np.dot((upper + lower) / 2 - (left + right) / 2, down)) / width
    return np.array([np.linalg.norm(upper - lower) / width, *eyes, smile])


def expression_state_error(landmarks: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of :func:`expression_state` (mouth, eyes, smile ratios)."""
    return float(np.abs(expression_state(landmarks) - expression_state(reference)).mean())


# Generic 3-D face (millimetre-ish units; x right, y down, z away from the camera, nose tip at the
# origin) and the FaceMesh index of each point in image orientation.
POSE_MODEL_POINTS = np.array(
    [
        [0.0, 0.0, 0.0],  # nose tip
        [0.0, 63.6, 12.5],  # chin
        [-43.3, -32.7, 26.0],  # image-left eye outer corner
        [43.3, -32.7, 26.0],  # image-right eye outer corner
        [-28.9, 28.9, 24.1],  # image-left mouth corner
        [28.9, 28.9, 24.1],  # image-right mouth corner
    ]
)
POSE_LANDMARKS = (1, 152, 33, 263, 61, 291)


def head_pose(landmarks: np.ndarray, image_size: int) -> np.ndarray | None:
    """(yaw, pitch, roll) in degrees of a face from its 468 landmarks (pixels of a square image).

    A pinhole camera with focal length = image size looks at the generic face model; a frontal
    upright face gives about (0, 0, 0). Yaw turns about the vertical axis, pitch nods, roll tilts
    in the image plane. Returns None when solvePnP fails."""
    points = np.asarray(landmarks, np.float64)[list(POSE_LANDMARKS), :2]
    f = float(image_size)
    camera = np.array([[f, 0, image_size / 2.0], [0, f, image_size / 2.0], [0, 0, 1.0]])
    # Initial guess: frontal, at the distance where the model's eye corners span the image's.
    model_width = POSE_MODEL_POINTS[3, 0] - POSE_MODEL_POINTS[2, 0]
    image_width = max(float(np.linalg.norm(points[3] - points[2])), 1e-3)
    rvec0, tvec0 = np.zeros((3, 1)), np.array([[0.0], [0.0], [f * model_width / image_width]])
    ok, rvec, _ = cv2.solvePnP(
        POSE_MODEL_POINTS, points, camera, None, rvec0, tvec0, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return None
    r, _ = cv2.Rodrigues(rvec)
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return np.array([yaw, pitch, roll])


def pose_error(a: np.ndarray, b: np.ndarray) -> float:
    """L2 distance (degrees) between two (yaw, pitch, roll) triples."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


__all__ = [
    "POSE_LANDMARKS",
    "POSE_MODEL_POINTS",
    "IdentityScorer",
    "detect_crop_landmarks",
    "expression_error",
    "expression_state",
    "expression_state_error",
    "head_pose",
    "identity_distances",
    "identity_gallery",
    "identity_transfer",
    "pose_error",
    "retrieval_top1",
]
