"""Artefact measures of a swapped photo against the photo it was made from (numpy, full frames).

Each compares the swap with the attribute photo *in the same face region*, so a photo's own blur,
grain or lighting cancels out; the unchanged photo scores 1 (ratios) or 0 (differences):

- :func:`sharpness_ratio`: Laplacian energy of the luminance inside the face, swap / photo, at the
  frame's own pixels (a 128 px crop pasted on a 400 px face is soft: well under 1).
- :func:`seam_ratio`: mean luminance gradient in the band around the face outline, where a paste
  mask ends, swap / photo (a hard edge or a colour step there: over 1).
- :func:`chroma_noise_ratio`: fine-scale a*/b* (CIELAB) variation inside the face, swap / photo
  (green/purple speckle: over 1).
- :func:`colour_mismatch`: how far the face's colour moved against the skin around it (neck, ears,
  forehead edge: pixels of the ring outside the outline with the face's own chroma), in CIELAB units
  (a face in the identity's colour on the attribute's neck: over 0).
- :func:`frechet_distance`: Fréchet distance between two sets of face features (the dlib network's
  layer under the descriptor), in a PCA space fitted on the reference set (few samples: full 256-d
  covariances would be singular).

Regions come from the attribute photo's 468 FaceMesh landmarks (:func:`face_regions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FACE_ERODE = 0.04  # of the face width: the face region stays clear of the outline
BAND_INSIDE, BAND_OUTSIDE = 0.12, 0.03  # the seam band: from this far inside the outline to this far outside
RING = (0.03, 0.12)  # the skin ring outside the outline (colour reference)
SKIN_CHROMA = 12.0  # a ring pixel is skin when its a*/b* is this close to the face's median (CIELAB units)
MIN_PIXELS = 50
MOUTH_OPEN_MIN = 30  # px: a smaller mouth opening is closed
TEETH_L, TEETH_A = 50.0, 15.0  # CIELAB: a mouth pixel lighter than L* and less red than a* is a tooth
TEETH_MIN = 0.15  # a photo whose open mouth is less teeth than this is not measured
TEETH_KEPT_MIN = 0.5  # a swap that keeps less than this share of the photo's teeth has them smeared over


@dataclass
class FaceRegions:
    """Boolean HxW masks of one face: inside (face), around the outline (band), skin around it (ring)."""

    face: np.ndarray
    band: np.ndarray
    ring: np.ndarray
    width: float


def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def face_regions(landmarks: np.ndarray, photo: np.ndarray) -> FaceRegions:
    """The regions of the face whose FaceMesh ``landmarks`` (frame pixels) lie in ``photo`` (HxWx3 RGB)."""
    points = np.asarray(landmarks, np.float64)[:, :2]
    hull = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    width = float(np.ptp(points[:, 0]))
    face = cv2.erode(hull, _disc(FACE_ERODE * width)).astype(bool)
    band = cv2.dilate(hull, _disc(BAND_OUTSIDE * width)).astype(bool) & ~cv2.erode(
        hull, _disc(BAND_INSIDE * width)
    ).astype(bool)
    ring = cv2.dilate(hull, _disc(RING[1] * width)).astype(bool) & ~cv2.dilate(hull, _disc(RING[0] * width)).astype(
        bool
    )
    lab = _lab(photo)
    if face.sum() >= MIN_PIXELS:  # skin: the ring's pixels whose chroma is the face's own
        chroma = np.median(lab[face][:, 1:], axis=0)
        ring &= np.linalg.norm(lab[..., 1:] - chroma, axis=-1) < SKIN_CHROMA
    return FaceRegions(face, band, ring, width)


def _lab(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 CIELAB (L 0..100, a*/b* about -128..127)."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _luminance(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _ratio(swap: float, photo: float) -> float:
    return float(swap / photo) if photo > 1e-9 else float("nan")


def sharpness_ratio(swap: np.ndarray, photo: np.ndarray, regions: FaceRegions) -> float:
    """Laplacian energy inside the face, swap / photo (1: as sharp as the photo; a blurred face is lower)."""
    energy = [
        float((cv2.Laplacian(_luminance(x), cv2.CV_32F, ksize=3)[regions.face] ** 2).mean()) for x in (swap, photo)
    ]
    return _ratio(*energy)


def seam_ratio(swap: np.ndarray, photo: np.ndarray, regions: FaceRegions) -> float:
    """Mean luminance gradient in the band around the outline, swap / photo (a visible paste edge is higher)."""

    def gradient(image: np.ndarray) -> float:
        lum = cv2.GaussianBlur(_luminance(image), (0, 0), 1.0)
        gx, gy = cv2.Sobel(lum, cv2.CV_32F, 1, 0), cv2.Sobel(lum, cv2.CV_32F, 0, 1)
        return float(np.hypot(gx, gy)[regions.band].mean())

    return _ratio(gradient(swap), gradient(photo))


def chroma_noise_ratio(swap: np.ndarray, photo: np.ndarray, regions: FaceRegions) -> float:
    """Fine a*/b* variation inside the face (chroma minus its 1.5 px blur), swap / photo (speckle is higher)."""

    def noise(image: np.ndarray) -> float:
        chroma = _lab(image)[..., 1:]
        fine = chroma - cv2.GaussianBlur(chroma, (0, 0), 1.5)
        return float(np.sqrt((fine[regions.face] ** 2).sum(axis=-1).mean()))

    return _ratio(noise(swap), noise(photo))


def colour_mismatch(swap: np.ndarray, photo: np.ndarray, regions: FaceRegions) -> float:
    """How far the face's mean CIELAB colour moved against the skin around it (neck, ears, forehead edge),
    swap vs photo: ``|(face - skin) of the swap - (face - skin) of the photo|`` (0: the photo's own relation;
    NaN when the photo shows too little skin around the face)."""
    if regions.ring.sum() < MIN_PIXELS or regions.face.sum() < MIN_PIXELS:
        return float("nan")

    def relation(image: np.ndarray) -> np.ndarray:
        lab = _lab(image)
        return lab[regions.face].mean(axis=0) - lab[regions.ring].mean(axis=0)

    return float(np.linalg.norm(relation(swap) - relation(photo)))


def frechet_distance(features: np.ndarray, reference: np.ndarray, dims: int = 16) -> float:
    """Fréchet distance between Gaussians fitted to ``features`` and ``reference`` (N x D each), after
    projecting both onto the reference set's top ``dims`` principal axes (at most N - 1)."""
    from scipy import linalg

    features, reference = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    k = int(min(dims, len(reference) - 1, len(features) - 1))
    if k < 1:
        return float("nan")
    mean = reference.mean(axis=0)
    _, _, axes = np.linalg.svd(reference - mean, full_matrices=False)
    a, b = (features - mean) @ axes[:k].T, (reference - mean) @ axes[:k].T
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2) + np.trace(cov_a + cov_b - 2.0 * root))


def _open_mouth(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """CIELAB pixels (N x 3) inside the open mouth of ``landmarks`` (the inner-lip polygon eroded by a pixel), or
    None when it is closed (fewer than ``MOUTH_OPEN_MIN`` pixels)."""
    from pocketswap.faces.types import INNER_LIP

    points = np.asarray(landmarks, np.float64)[list(INNER_LIP), :2]
    x0, y0 = np.maximum(np.floor(points.min(0)).astype(int) - 2, 0)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 3
    window = image[y0:y1, x0:x1]
    if window.size == 0:
        return None
    mask = np.zeros(window.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round((points - (x0, y0)) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    inside = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    return _lab(window)[inside] if inside.sum() >= MOUTH_OPEN_MIN else None


def teeth_share(lab: np.ndarray) -> float:
    """The share of teeth-like pixels (light and not red: L* over ``TEETH_L``, a* under ``TEETH_A``) of a mouth."""
    return float(((lab[:, 0] > TEETH_L) & (lab[:, 1] < TEETH_A)).mean())


def teeth_kept(swap: np.ndarray, swap_landmarks: np.ndarray | None, photo: np.ndarray, photo_landmarks: np.ndarray):
    """The swap's share of teeth in its open mouth over the photo's (each by its own landmarks, so a mouth the swap
    moved is still compared with itself): about 1 when the teeth stayed, near 0 when lips or skin were smeared over
    them (``mouth_smeared``: under ``TEETH_KEPT_MIN``). NaN when the photo shows no teeth (under ``TEETH_MIN``)."""
    photo_mouth = _open_mouth(photo, photo_landmarks)
    if photo_mouth is None or teeth_share(photo_mouth) < TEETH_MIN:
        return float("nan")
    swap_mouth = _open_mouth(swap, swap_landmarks) if swap_landmarks is not None else None
    return 0.0 if swap_mouth is None else min(teeth_share(swap_mouth) / teeth_share(photo_mouth), 2.0)


def artefact_scores(swap: np.ndarray, photo: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Every artefact measure of ``swap`` against ``photo``, in the face of ``landmarks``."""
    regions = face_regions(landmarks, photo)
    return {
        "sharpness": sharpness_ratio(swap, photo, regions),
        "seam": seam_ratio(swap, photo, regions),
        "chroma_noise": chroma_noise_ratio(swap, photo, regions),
        "colour_mismatch": colour_mismatch(swap, photo, regions),
    }


__all__ = [
    "FaceRegions",
    "artefact_scores",
    "chroma_noise_ratio",
    "colour_mismatch",
    "face_regions",
    "teeth_kept",
    "frechet_distance",
    "seam_ratio",
    "sharpness_ratio",
]
