"""What of a face belongs to the frame rather than to the person: its light, its skin's tone, its facial hair.

Blind raters called the geometric teacher's swaps manipulated for three reasons this module answers (see
``bench panel``): the identity photo's light and tone on a face lit otherwise (**relight**: the identity's
local skin mean, in CIELAB, replaced by the frame's), a beard or stubble painted over as flat skin or a shadow
of one (**facial hair** is the frame's, like head hair: :func:`facial_hair_mask` finds it in the frame and in
the identity, and the swap keeps the frame's pixels there), and lipstick-red lips on faces that wear none
(**lip and eye-shadow colour** are the frame's: :func:`colour_from`), and its skin's finest grain
(:func:`frame_grain`).
"""

from __future__ import annotations

import cv2
import numpy as np

from pocketswap.faces.types import NOSE_TIP, OUTER_LIP
from pocketswap.teacher.mesh import CHIN, EYE_RINGS, LEFT_EYEBROW, RIGHT_EYEBROW

# Facial hair: a pixel of the lower face is hair when it is darker than the cheeks' skin by this many of
# the skin's spread (MADs), or as textured as this many times the skin's typical local contrast.
HAIR_DARKER = 3.0
HAIR_TEXTURE = 2.5
GRAIN_SCALE = 0.006  # of the crop: luminance detail finer than this Gaussian is grain (pores, noise)
FOLD_SCALE = 0.025  # of the crop: luminance detail finer than this Gaussian is a fold or a wrinkle
HAIR_MIN_SHARE = 0.06  # less hair than this share of the lower face is speckle or shadow, not a beard


def polygon_mask(size: int, polygons: list[np.ndarray]) -> np.ndarray:
    """uint8 HxW mask (255 inside) of float polygons, drawn with sub-pixel precision."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(p * 16).astype(np.int32) for p in polygons], 255, lineType=cv2.LINE_8, shift=4)
    return mask


def to_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def from_lab(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def feature_mask(size: int, landmarks: np.ndarray) -> np.ndarray:
    """uint8 mask of the eyes, lips and brows (what is not skin), grown a little."""
    points = landmarks[:, :2]
    features = [points[list(ring)] for ring in EYE_RINGS] + [points[list(OUTER_LIP)]]
    features += [points[list(brow)] for brow in (RIGHT_EYEBROW, LEFT_EYEBROW)]
    grow = max(1, size // 64)
    return cv2.dilate(polygon_mask(size, features), np.ones((2 * grow + 1,) * 2, np.uint8))


def local_mean(lab: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean of ``lab`` over the pixels of ``weights`` (normalised convolution)."""
    total = cv2.GaussianBlur(lab * weights[..., None], (0, 0), sigma)
    return total / np.maximum(cv2.GaussianBlur(weights, (0, 0), sigma), 1e-4)[..., None]


def relight(source: np.ndarray, target: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """``source`` (uint8 RGB, already warped onto ``target``'s geometry) under ``target``'s lighting and skin
    tone: its CIELAB local mean over ``region`` (bool HxW skin) swapped for ``target``'s, and its colour detail
    (a*/b* about that mean: veins, flushed lids, make-up) scaled by how saturated ``target``'s skin is beside its
    own (never up): on a grey or pale frame the identity's colour detail fades with its colour, instead of
    turning cyan where it was less red than its mean."""
    if region.sum() < 32:
        return source
    src, dst = to_lab(source), to_lab(target)
    weights = region.astype(np.float32)
    own, wanted = local_mean(src, weights, sigma), local_mean(dst, weights, sigma)
    detail = src - own
    saturation = lambda mean: np.hypot(mean[..., 1], mean[..., 2])  # noqa: E731
    detail[..., 1:] *= np.clip(saturation(wanted) / np.maximum(saturation(own), 1.0), 0.0, 1.0)[..., None]
    return from_lab(wanted + detail)


def damp_fine_chroma(image: np.ndarray, keep: float) -> np.ndarray:
    """``image`` with its a*/b* variation finer than one pixel scaled by ``keep`` (speckle, not features:
    the luminance carries the detail)."""
    if keep >= 1.0:
        return image
    lab = to_lab(image)
    chroma = lab[..., 1:]
    lab[..., 1:] -= (1.0 - keep) * (chroma - cv2.GaussianBlur(chroma, (0, 0), 1.0))
    return from_lab(lab)


def _lower_face(size: int, landmarks: np.ndarray, core: np.ndarray) -> np.ndarray:
    """bool mask of the face below the line a quarter of the way from the eyes down to the nose tip."""
    points = landmarks[:, :2]
    eyes_y = np.mean([points[list(ring), 1].mean() for ring in EYE_RINGS])
    top = eyes_y + 0.75 * (points[NOSE_TIP, 1] - eyes_y)
    rows = np.arange(size, dtype=np.float32)[:, None]
    below = (rows > top) & (rows < points[CHIN, 1] + 0.1 * (points[CHIN, 1] - top))
    return below & (core > 0)


def _cheeks(size: int, landmarks: np.ndarray, core: np.ndarray) -> np.ndarray:
    """bool mask of the skin between the eyes and the nose tip (the reference skin, rarely bearded)."""
    points = landmarks[:, :2]
    eyes_y = np.mean([points[list(ring), 1].mean() for ring in EYE_RINGS])
    rows = np.arange(size, dtype=np.float32)[:, None]
    band = (rows > eyes_y + 0.2 * (points[NOSE_TIP, 1] - eyes_y)) & (rows < points[NOSE_TIP, 1])
    return band & (core > 0) & (feature_mask(size, landmarks) == 0)


def facial_hair_mask(image: np.ndarray, landmarks: np.ndarray, core: np.ndarray) -> np.ndarray:
    """float32 HxW weights in [0, 1] of the beard, moustache and stubble of the aligned face ``image``: pixels of
    the lower face (lips and mouth excluded) much darker or much more textured than the cheeks' skin, kept
    only where they make up a patch (a beard), not speckle."""
    size = image.shape[0]
    lab = to_lab(image)
    light = lab[..., 0]
    cheeks = _cheeks(size, landmarks, core)
    lower = _lower_face(size, landmarks, core) & (polygon_mask(size, [landmarks[list(OUTER_LIP), :2]]) == 0)
    if cheeks.sum() < 32 or lower.sum() < 32:
        return np.zeros((size, size), np.float32)
    scale = max(1.0, size / 128.0)
    mean = cv2.GaussianBlur(light, (0, 0), 1.5 * scale)
    texture = np.sqrt(np.maximum(cv2.GaussianBlur(light * light, (0, 0), 1.5 * scale) - mean * mean, 0.0))
    skin_light = float(np.median(light[cheeks]))
    skin_spread = float(np.median(np.abs(light[cheeks] - skin_light))) * 1.4826 + 1.0
    skin_texture = float(np.median(texture[cheeks])) + 0.5
    darker = (skin_light - mean) / (HAIR_DARKER * skin_spread)
    textured = texture / (HAIR_TEXTURE * skin_texture)
    hair = np.clip(np.maximum(darker, textured) - 0.5, 0.0, 1.0) * 2.0  # 0 below half the threshold, 1 at it
    hair = np.where(lower, np.minimum(hair, 1.0), 0.0).astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(3 * scale) | 1,) * 2)
    hair = cv2.morphologyEx(hair, cv2.MORPH_CLOSE, kernel)  # a beard is a patch: fill its gaps
    hair = cv2.GaussianBlur(hair, (0, 0), 1.5 * scale)
    if float((hair > 0.5).sum()) < HAIR_MIN_SHARE * float(lower.sum()):
        return np.zeros((size, size), np.float32)
    return np.clip(hair, 0.0, 1.0)


def lip_region(size: int, landmarks: np.ndarray) -> np.ndarray:
    """float32 HxW weights of the lips (the outer-lip polygon, feathered)."""
    lips = polygon_mask(size, [landmarks[list(OUTER_LIP), :2]]).astype(np.float32) / 255.0
    return cv2.GaussianBlur(lips, (0, 0), max(1.0, size / 128.0))


def lid_region(size: int, landmarks: np.ndarray) -> np.ndarray:
    """float32 HxW weights of each eye's surround: lids, lashes and brow (the hull of the eye ring and the brow,
    grown a little below the eye), feathered: where eye make-up sits."""
    points = landmarks[:, :2]
    hulls = []
    for ring, brow in zip(EYE_RINGS, (RIGHT_EYEBROW, LEFT_EYEBROW), strict=True):
        eye = points[list(ring)]
        below = eye + np.array([0.0, 0.35 * (eye[:, 1].max() - eye[:, 1].min() + 1.0)], np.float32)
        hulls.append(cv2.convexHull(np.concatenate([eye, below, points[list(brow)]]).astype(np.float32))[:, 0])
    grow = max(1, size // 48)
    mask = cv2.dilate(polygon_mask(size, hulls), np.ones((2 * grow + 1,) * 2, np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), grow)


def colour_from(source: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``source`` with its a*/b* taken from ``target`` (both uint8 RGB on the same geometry) by the weights
    ``region`` (HxW in [0, 1]): shape and shading stay the identity's, the colour is the frame's (no lipstick or
    eye shadow carried across)."""
    weight = region[..., None]
    src, dst = to_lab(source), to_lab(target)
    src[..., 1:] = src[..., 1:] * (1.0 - weight) + dst[..., 1:] * weight
    return from_lab(src)


def frame_folds(source: np.ndarray, frame: np.ndarray, landmarks: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``source`` with the luminance detail of its lower face (below the nose tip: smile folds, the mouth's
    surroundings, the chin) swapped for ``frame``'s (both uint8 RGB on the same geometry): the folds follow the
    frame's expression, never the identity photo's smile on a face that does not make it."""
    size = source.shape[0]
    points = landmarks[:, :2]
    rows = np.arange(size, dtype=np.float32)[:, None]
    region = ((rows > points[NOSE_TIP, 1]) & (core > 0)).astype(np.float32)
    return _frame_detail(source, frame, cv2.GaussianBlur(region, (0, 0), size / 32.0), size * FOLD_SCALE)


def frame_grain(source: np.ndarray, frame: np.ndarray, landmarks: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``source`` with the finest luminance detail of its skin (pores, grain, the camera's noise: finer than
    ``GRAIN_SCALE`` of the crop) swapped for ``frame``'s (both uint8 RGB on the same geometry; eyes with their lids
    and lashes, brows and lips keep their own): the face has the frame's texture, so it neither looks airbrushed
    in a sharp photo nor shows a seam where its texture meets the frame's."""
    size = source.shape[0]
    skin = ((core > 0) & (feature_mask(size, landmarks) == 0)).astype(np.float32)
    skin *= 1.0 - lid_region(size, landmarks)  # the frame's lashes and brows would show through as ghosts
    weight = cv2.GaussianBlur(skin, (0, 0), max(1.0, size / 128.0))
    return _frame_detail(source, frame, weight, max(0.7, size * GRAIN_SCALE))


def _frame_detail(source: np.ndarray, frame: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """``source`` with its CIELAB lightness finer than a ``sigma`` px Gaussian swapped for ``frame``'s, by the HxW
    ``weight`` (both uint8 RGB on the same geometry)."""
    src, dst = to_lab(source), to_lab(frame)
    detail = lambda lab: lab[..., 0] - cv2.GaussianBlur(lab[..., 0], (0, 0), sigma)  # noqa: E731
    src[..., 0] += weight * (detail(dst) - detail(src))
    return from_lab(src)
