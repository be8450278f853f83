"""Alignment by similarity transform to 5-point templates, and paste-back into the frame.

Templates are stored in their native crop size and scaled to the requested one. The ArcFace
template follows insightface's convention for other sizes: sizes that are multiples of 112 are
scaled by size/112; otherwise by size/128 with an 8*ratio px x-shift (so 128 is the inswapper
crop). Keypoint order everywhere: image-left eye centre, image-right eye centre, nose tip,
image-left mouth corner, image-right mouth corner (see `Face.keypoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from pocketswap.faces.raster import polygon_distances
from pocketswap.faces.types import INNER_LIP, MOUTH_CORNERS

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def _arcface(size: int) -> np.ndarray:
    if size % 112 == 0:
        return ARCFACE_112 * (size / 112.0)
    ratio = size / 128.0
    return (ARCFACE_112 + np.array([8.0, 0.0], dtype=np.float32)) * ratio


def _dlib(size: int) -> np.ndarray:
    from pocketswap.faces.dlib_resnet import DLIB_CHIP_TEMPLATE_150

    return np.asarray(DLIB_CHIP_TEMPLATE_150, dtype=np.float32) * (size / 150.0)


# name -> function(size) giving the (5, 2) template in crop pixels.
TEMPLATES = {"arcface": _arcface, "dlib": _dlib}


def template_points(size: int, template: str = "arcface") -> np.ndarray:
    """The (5, 2) float32 template for a square crop of `size` pixels."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown alignment template '{template}'; choose one of {sorted(TEMPLATES)}")
    if size < 16:
        raise ValueError(f"crop size must be at least 16 px, got {size}")
    return TEMPLATES[template](size).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst:
    Umeyama's solution, which in 2-D is the complex least squares z = sum(conj(s) d) / sum(|s|^2) of the
    centred points. Returns a 2x3 float32 matrix."""
    src = np.asarray(src, dtype=np.float64)[:, :2]
    dst = np.asarray(dst, dtype=np.float64)[:, :2]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    norm = max(float((s * s).sum()), 1e-12)
    a = float((s * d).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]]).astype(np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2+) points (extra columns are dropped)."""
    pts = np.asarray(points, dtype=np.float32)[:, :2]
    return pts @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix.astype(np.float32))


@dataclass(frozen=True)
class AlignedFace:
    """An aligned square crop and the 2x3 matrix that maps image pixels to crop pixels."""

    crop: np.ndarray
    matrix: np.ndarray
    size: int
    template: str

    def landmarks_in_crop(self, landmarks: np.ndarray) -> np.ndarray:
        """(N, 2|3) image landmarks -> crop pixels (float32); a z column is scaled with the crop."""
        matrix = self.matrix.astype(np.float64)
        points = np.asarray(landmarks, np.float64).copy()
        points[:, :2] = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        if points.shape[1] > 2:
            points[:, 2] *= float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        return points.astype(np.float32)


# Crops and pastes resample with bicubic interpolation: at the face's own scale a bilinear warp's
# sub-pixel shifts blur it (twice per frame: out of the frame and back), bicubic keeps the detail.
RESAMPLE = cv2.INTER_CUBIC


def prefiltered(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``image`` low-passed for a warp by ``matrix`` that shrinks it (a point-sampling warp would alias its
    detail into speckle; an enlarging warp needs no filter)."""
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))))
    if scale >= 1.0:
        return image
    return cv2.GaussianBlur(image, (0, 0), 0.5 * float(np.sqrt(1.0 / scale**2 - 1.0)))


def align_face(image: np.ndarray, keypoints: np.ndarray, size: int = 224, template: str = "arcface") -> AlignedFace:
    """Warp the face with these 5 keypoints onto the template, giving a `size` x `size` crop."""
    matrix = similarity_transform(keypoints, template_points(size, template))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=RESAMPLE, borderMode=cv2.BORDER_REFLECT)
    return AlignedFace(crop=crop, matrix=matrix, size=size, template=template)


def hull_mask(points: np.ndarray, size: int, feather: float = 0.06) -> np.ndarray:
    """Feathered convex-hull mask (size x size float32 in [0,1]) of crop-space points.

    `feather` is the blur width as a fraction of the crop; the hull is eroded by the same amount
    so the feathered edge stays inside the face."""
    mask = np.zeros((size, size), dtype=np.uint8)
    hull = cv2.convexHull(np.round(points[:, :2]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255)
    radius = max(1, int(round(feather * size)))
    if radius > 1:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (radius, radius)))
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=radius / 2.0)
    return mask.astype(np.float32) / 255.0


# Paste-back numbers (the artifact manifest's ``swap_spec.paste`` records them; :func:`paste_spec`).
EDGE_RAMP = 0.06  # the mask falls linearly to 0 over this share of the crop at its edges
COLOUR_REGION = 0.5  # the colour match's statistics come from the pixels whose weight is above this
COLOUR_EPS = 1e-3  # added to both standard deviations of the colour match's gain
COLOUR_MIN_PIXELS = 16  # a smaller region leaves the colour as it is
# The frame's mouth opening (frame_kept), as shares of the mouth's width: a ring grown 3% and feathered over 8%
# reached into the lips and cost the teacher 5.5 points of dlib identity on people-dev.
MOUTH_KEPT = {"grow": 0.0, "feather": 0.06}


@lru_cache(maxsize=8)
def border_ramp(size: int, width: float = EDGE_RAMP) -> np.ndarray:
    """size x size float32 weights falling linearly to 0 over `width` of the crop at its edges, so a
    mask that reaches the crop border never leaves a hard seam in the frame."""
    ramp = np.clip((np.arange(size, dtype=np.float32) + 0.5) / max(width * size, 1.0), 0.0, 1.0)
    ramp = np.minimum(ramp, ramp[::-1])
    return np.minimum.outer(ramp, ramp)


def color_transfer(
    source: np.ndarray,
    target: np.ndarray,
    region: np.ndarray,
    eps: float = COLOUR_EPS,
    min_pixels: int = COLOUR_MIN_PIXELS,
    gain_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """``source`` with its CIELAB mean and standard deviation matched to ``target``'s over ``region`` (HxW:
    bool, or weights counted where > ``COLOUR_REGION``), all uint8 RGB: per channel ``(x - mean_s) * g + mean_t`` with gain
    ``g = (std_t + eps) / (std_s + eps)``. ``gain_range`` bounds the lightness gain and caps the chroma gains
    (which may fall to 0, so a grey target greys the source). Fewer than ``min_pixels`` in the region: unchanged.
    The one colour match of the project (paste-back and the built-in teacher)."""
    mask = (region > COLOUR_REGION).astype(np.uint8)
    if cv2.countNonZero(mask) < min_pixels:
        return source
    src_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB)
    src_mean, src_std = cv2.meanStdDev(src_lab, mask=mask)
    dst_mean, dst_std = cv2.meanStdDev(cv2.cvtColor(target, cv2.COLOR_RGB2LAB), mask=mask)
    gain = ((dst_std + eps) / (src_std + eps)).ravel()
    if gain_range is not None:
        gain[0] = np.clip(gain[0], *gain_range)
        gain[1:] = np.clip(gain[1:], 0.0, gain_range[1])
    affine = np.hstack([np.diag(gain), dst_mean - gain[:, None] * src_mean])
    return cv2.cvtColor(cv2.transform(src_lab, affine), cv2.COLOR_LAB2RGB)  # rounds and saturates to uint8


def fine_detail(region: np.ndarray, inverse: np.ndarray, size: int) -> np.ndarray | None:
    """The luminance detail of ``region`` (a frame's face rectangle, uint8 RGB) that a ``size`` px crop
    cannot hold: its grey minus that grey seen through the crop (resampled down to the crop by the inverse
    of ``inverse``, the crop -> region matrix, as the crop itself is made, and back up), int16 HxWx3 (the
    same in each channel: the frame's chroma detail is not added). None when the crop is as fine as the frame."""
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(inverse, np.float64)[:, :2]))))
    if scale <= 1.0:
        return None
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    matrix = invert_affine(inverse)
    seen = cv2.warpAffine(grey, matrix, (size, size), flags=RESAMPLE, borderMode=cv2.BORDER_REPLICATE)
    back = cv2.warpAffine(seen, inverse, grey.shape[::-1], flags=RESAMPLE, borderMode=cv2.BORDER_REPLICATE)
    return cv2.merge([cv2.subtract(grey, back, dtype=cv2.CV_16S)] * 3)


def frame_kept(landmarks: np.ndarray, size: int) -> np.ndarray:
    """float32 SxS weights in [0, 1] of the crop pixels that stay the frame's whatever the swap drew there: the
    mouth's opening (teeth, tongue), the inner-lip contour of ``landmarks`` ((468, 2+) crop pixels) grown by
    ``MOUTH_KEPT["grow"]`` and ramped over ``MOUTH_KEPT["feather"]``, both of the mouth's corner-to-corner width.
    Every swap keeps the attribute's mouth in place (``faces.shape.RIGID_FEATURES``), so no model can smear
    lips or skin over the frame's teeth."""
    points = np.asarray(landmarks, np.float64)[:, :2]
    width = max(float(np.linalg.norm(points[MOUTH_CORNERS[0]] - points[MOUTH_CORNERS[1]])), 1.0)
    grow, feather = MOUTH_KEPT["grow"] * width, max(MOUTH_KEPT["feather"] * width, 1.0)
    polygon = points[list(INNER_LIP)]
    out = np.zeros((size, size), np.float32)
    reach = grow + feather  # only the mouth's bounding box can be kept: a few thousand pixels, not the crop
    x0, y0 = np.floor(polygon.min(0) - reach).astype(int).clip(0, size)
    x1, y1 = np.ceil(polygon.max(0) + reach).astype(int).clip(0, size)
    if x1 <= x0 or y1 <= y0:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1]
    distance = polygon_distances(np.stack([xs.ravel(), ys.ravel()], 1), polygon, beyond=reach)
    out[y0:y1, x0:x1] = np.clip(0.5 + (distance + grow) / feather, 0.0, 1.0).reshape(ys.shape)
    return out


def paste_back(
    frame: np.ndarray,
    crop: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    feather: float = 0.06,
    match_color: bool = False,
    keep_detail: bool = False,
    kept: np.ndarray | None = None,
) -> np.ndarray:
    """Blend an aligned crop back into `frame` (returns a new frame; the input is not modified).

    The blending mask is `mask` (crop-space HxW float in [0,1], e.g. a student's mask head) or
    else the feathered hull of `landmarks` given in image pixels. Only the face's bounding
    rectangle in the frame is warped and blended. `keep_detail`: on a face larger than the crop, the
    frame's own detail finer than the crop can hold is added back (:func:`fine_detail`). ``kept``: crop-space HxW
    weights of pixels that stay the frame's (:func:`frame_kept`)."""
    size = crop.shape[0]
    if mask is None:
        if landmarks is None:
            raise ValueError("paste_back needs a mask or landmarks")
        mask = hull_mask(transform_points(landmarks, matrix), size, feather)
    mask = mask * border_ramp(size)
    if kept is not None:
        mask = mask * (1.0 - kept)
    inverse = invert_affine(matrix)
    corners = transform_points(np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float32), inverse)
    height, width = frame.shape[:2]
    x0, y0 = np.floor(corners.min(0)).astype(int).clip(0, [width, height])
    x1, y1 = np.ceil(corners.max(0)).astype(int).clip(0, [width, height])
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    roi_inverse = inverse.copy()
    roi_inverse[:, 2] -= (x0, y0)
    roi_size = (int(x1 - x0), int(y1 - y0))
    region = out[y0:y1, x0:x1]
    if match_color:
        frame_crop = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR)
        crop = color_transfer(crop, frame_crop, mask)
    warped = cv2.warpAffine(
        prefiltered(crop, inverse), roi_inverse, roi_size, flags=RESAMPLE, borderMode=cv2.BORDER_REPLICATE
    )
    detail = fine_detail(region, roi_inverse, size) if keep_detail else None
    if detail is not None:
        warped = cv2.add(warped, detail, dtype=cv2.CV_8U)
    alpha = cv2.warpAffine(mask.astype(np.float32), roi_inverse, roi_size, flags=cv2.INTER_LINEAR)
    region[...] = cv2.blendLinear(warped, region, alpha, 1.0 - alpha)
    return out
