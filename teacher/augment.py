"""Augmentations for paired-data generation (face datasets lack expressions and occlusions).

Everything takes an explicit `numpy.random.Generator`, so a pair is a pure function of its seed.

- flips with FaceMesh's mirror map (`teacher.mesh.FLIP_MAP`);
- pose jitter (roll/scale/shift of the aligned crop) and landmark-driven expression warps (jaw
  drop, smile, eyebrow raise/frown) rendered with the piecewise-affine mesh warp;
- colour and lighting jitter (brightness, contrast, saturation, hue, gamma, a directional light);
- the occluders' configuration (the occluders themselves, pasted on the attribute and re-composited on top of the
  teacher output, are :mod:`pocketswap.teacher.occluders`);
- pseudo-identities: two real faces warped to their blended geometry and cross-dissolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from pocketswap.core.config import Config, check_range
from pocketswap.core.errors import ConfigError
from pocketswap.faces.types import LEFT_EYE_RING, MOUTH_CORNERS, RIGHT_EYE_RING, inter_ocular
from pocketswap.faces.warp import MeshWarp, border_anchors
from pocketswap.teacher.base import AlignedRecord, face_mask
from pocketswap.teacher.mesh import (
    CHIN,
    LEFT_EYEBROW,
    LOWER_INNER_LIP_CENTRE,
    RIGHT_EYEBROW,
    UPPER_INNER_LIP_CENTRE,
    flip_landmarks,
)

OCCLUDER_KINDS = ("rectangle", "ellipse", "hand", "sunglasses")


# -- configuration -------------------------------------------------------------------------------
def _prob(name: str, value: float) -> None:
    check_range(name, value, 0.0, 1.0)


@dataclass(frozen=True)
class FlipConfig(Config):
    attribute: float = 0.5  # probability of mirroring the attribute
    identity: float = 0.5  # probability of mirroring the identity

    def __post_init__(self) -> None:
        _prob("attribute", self.attribute)
        _prob("identity", self.identity)


@dataclass(frozen=True)
class PoseConfig(Config):
    prob: float = 0.5
    roll_degrees: float = 8.0  # max in-plane rotation
    scale: float = 0.06  # max relative zoom in/out
    shift: float = 0.04  # max translation, fraction of the crop

    def __post_init__(self) -> None:
        _prob("prob", self.prob)
        check_range("roll_degrees", self.roll_degrees, 0.0, 45.0)
        check_range("scale", self.scale, 0.0, 0.5)
        check_range("shift", self.shift, 0.0, 0.3)


@dataclass(frozen=True)
class ExpressionConfig(Config):
    prob: float = 0.5
    jaw_open: float = 0.25  # max jaw drop, fraction of the inter-ocular distance
    smile: float = 0.15  # max mouth-corner pull (outwards and up), fraction of inter-ocular distance
    brow: float = 0.12  # max eyebrow raise (or frown when negative), fraction of inter-ocular distance

    def __post_init__(self) -> None:
        _prob("prob", self.prob)
        for name in ("jaw_open", "smile", "brow"):
            check_range(name, getattr(self, name), 0.0, 1.0)


@dataclass(frozen=True)
class ColorConfig(Config):
    prob: float = 0.8  # probability of jittering the attribute
    identity_prob: float = 0.3  # probability of (milder) jitter on the identity
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.25
    hue_degrees: float = 6.0
    gamma: float = 0.2
    light: float = 0.25  # strength of a directional lighting gradient
    colorize: float = 0.7  # probability of tinting a grayscale attribute with a skin tone (cameras are colour)

    def __post_init__(self) -> None:
        _prob("prob", self.prob)
        _prob("identity_prob", self.identity_prob)
        _prob("colorize", self.colorize)
        for name in ("brightness", "contrast", "saturation", "gamma", "light"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("hue_degrees", self.hue_degrees, 0.0, 90.0)


@dataclass(frozen=True)
class OccluderConfig(Config):
    prob: float = 0.3  # probability that a pair gets occluders
    max_count: int = 2
    kinds: tuple[str, ...] = OCCLUDER_KINDS
    max_cover: float = 0.35  # max fraction of the face hull one occluder may cover

    def __post_init__(self) -> None:
        _prob("prob", self.prob)
        check_range("max_count", self.max_count, 1, 8)
        if not self.kinds or any(k not in OCCLUDER_KINDS for k in self.kinds):
            raise ConfigError(f"config field 'kinds' must be a non-empty list of {', '.join(OCCLUDER_KINDS)}")
        check_range("max_cover", self.max_cover, 0.01, 1.0)


@dataclass(frozen=True)
class PseudoIdentityConfig(Config):
    share: float = 0.3  # fraction of cross-identity pairs whose identity is a morph of two real faces
    count: int = 200  # size of the pseudo-identity pool (each a fixed function of the seed)
    alpha: tuple[float, float] = (0.35, 0.65)  # mixing weight range of the second face

    def __post_init__(self) -> None:
        _prob("share", self.share)
        check_range("count", self.count, 1, 10_000_000)
        low, high = self.alpha
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"config field 'alpha' must satisfy 0 <= low <= high <= 1, got {[low, high]}")


@dataclass(frozen=True)
class AugmentConfig(Config):
    """All augmentation knobs; `enabled: false` turns every augmentation off."""

    enabled: bool = True
    flip: FlipConfig = field(default_factory=FlipConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    occluder: OccluderConfig = field(default_factory=OccluderConfig)
    pseudo_identity: PseudoIdentityConfig = field(default_factory=PseudoIdentityConfig)


# -- geometry helpers ----------------------------------------------------------------------------
def _with_xy(record: AlignedRecord, image: np.ndarray, landmarks: np.ndarray) -> AlignedRecord:
    return AlignedRecord(image, landmarks.astype(np.float32), record.embedding, record.name, dict(record.extra))


def flip_record(record: AlignedRecord) -> AlignedRecord:
    """Mirror the crop and its landmarks (indices swapped with the mesh's mirror map)."""
    image = np.ascontiguousarray(record.image[:, ::-1])
    return _with_xy(record, image, flip_landmarks(record.landmarks, record.image.shape[1]))


def pose_jitter(record: AlignedRecord, rng: np.random.Generator, cfg: PoseConfig) -> AlignedRecord:
    """Random roll/zoom/shift of the crop about its centre (landmarks follow; z scales with zoom)."""
    size = record.size
    angle = rng.uniform(-cfg.roll_degrees, cfg.roll_degrees)
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    shift = rng.uniform(-cfg.shift, cfg.shift, size=2) * size
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += shift
    image = cv2.warpAffine(record.image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    landmarks = record.landmarks.copy()
    landmarks[:, :2] = landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    if landmarks.shape[1] > 2:
        landmarks[:, 2] *= scale
    return _with_xy(record, image, landmarks)


def _gaussian_pull(points: np.ndarray, centre: np.ndarray, vector: np.ndarray, radius: float) -> np.ndarray:
    weight = np.exp(-np.sum((points - centre) ** 2, axis=1) / (2.0 * radius**2))
    return weight[:, None] * vector[None, :]


def expression_displacement(landmarks: np.ndarray, jaw: float, smile: float, brow: float) -> np.ndarray:
    """(468, 2) landmark displacements for a jaw drop, a smile and a brow raise, each given as a
    fraction of the inter-ocular distance (negative brow = frown, negative smile = mouth corners down)."""
    xy = landmarks[:, :2].astype(np.float64)
    iod = max(inter_ocular(landmarks), 1.0)
    out = np.zeros_like(xy)
    # Face axes: "down" from the eyes' midpoint towards the chin, "right" along the eye line.
    eye_r, eye_l = xy[list(RIGHT_EYE_RING)].mean(0), xy[list(LEFT_EYE_RING)].mean(0)
    across = (eye_l - eye_r) / max(np.linalg.norm(eye_l - eye_r), 1e-6)
    down = np.array([-across[1], across[0]])
    if np.dot(xy[CHIN] - (eye_r + eye_l) / 2.0, down) < 0:
        down = -down
    if jaw:
        # Everything below the mouth opening moves down, fading out sideways and towards the lips.
        mouth = (xy[UPPER_INNER_LIP_CENTRE] + xy[LOWER_INNER_LIP_CENTRE]) / 2.0
        rel = xy - mouth
        below = np.clip(rel @ down / (0.15 * iod) + 0.5, 0.0, 1.0)
        below[UPPER_INNER_LIP_CENTRE] = 0.0
        sideways = np.clip(1.0 - np.abs(rel @ across) / (1.6 * iod), 0.0, 1.0) ** 0.7
        out += (jaw * iod) * (below * sideways)[:, None] * down[None, :]
    if smile:
        for index, sign in zip(MOUTH_CORNERS, (-1.0, 1.0), strict=True):
            vector = smile * iod * (sign * across * 0.6 - down * 0.8)
            out += _gaussian_pull(xy, xy[index], vector, 0.25 * iod)
    if brow:
        for ring in (RIGHT_EYEBROW, LEFT_EYEBROW):
            centre = xy[list(ring)].mean(0)
            out += _gaussian_pull(xy, centre, -down * brow * iod, 0.35 * iod)
    return out.astype(np.float32)


def warp_to_landmarks(record: AlignedRecord, new_xy: np.ndarray) -> AlignedRecord:
    """Re-render the crop so its landmarks move to `new_xy` (border fixed; piecewise-affine)."""
    size = record.size
    anchors = border_anchors(size, size, 4)
    dst = np.concatenate([new_xy[:, :2], anchors])
    src = np.concatenate([record.landmarks[:, :2], anchors])
    image = MeshWarp(dst, (size, size)).warp(record.image, src)
    landmarks = record.landmarks.copy()
    landmarks[:, :2] = new_xy[:, :2]
    return _with_xy(record, image, landmarks)


def expression_warp(record: AlignedRecord, rng: np.random.Generator, cfg: ExpressionConfig) -> AlignedRecord:
    """A random expression change rendered by warping the crop along its landmarks."""
    jaw = rng.uniform(0.0, cfg.jaw_open) if rng.random() < 0.5 else 0.0
    smile = rng.uniform(-0.4 * cfg.smile, cfg.smile) if rng.random() < 0.5 else 0.0
    brow = rng.uniform(-0.5 * cfg.brow, cfg.brow) if rng.random() < 0.5 else 0.0
    if not (jaw or smile or brow):
        jaw = rng.uniform(0.0, cfg.jaw_open)
    moved = record.landmarks[:, :2] + expression_displacement(record.landmarks, jaw, smile, brow)
    return warp_to_landmarks(record, moved)


# -- colour ----
@lru_cache(maxsize=8)
def unit_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates scaled to [-0.5, 0.5) (cached, read-only)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs / width - 0.5, ys / height - 0.5
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: ColorConfig, strength: float = 1.0) -> np.ndarray:
    """Random brightness/contrast/saturation/hue/gamma and a directional light, on uint8 RGB."""
    x = image.astype(np.float32) / 255.0
    s = strength
    gamma = float(np.exp(rng.uniform(-cfg.gamma, cfg.gamma) * s))
    x = np.power(x, gamma)
    mean = x.mean()
    x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast) * s) + mean
    x = x + rng.uniform(-cfg.brightness, cfg.brightness) * s
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * (1.0 + rng.uniform(-cfg.saturation, cfg.saturation) * s)
    if cfg.light > 0:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        xs, ys = unit_grid(*x.shape[:2])
        ramp = (np.cos(theta) * xs + np.sin(theta) * ys) * 2.0
        x = x * (1.0 + rng.uniform(0.0, cfg.light) * s * ramp)[..., None]
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    hue = rng.uniform(-cfg.hue_degrees, cfg.hue_degrees) * s
    if abs(hue) > 0.25:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(hue / 2.0))) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


# Typical skin tones (sRGB), light to dark, that grayscale faces are tinted with.
SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 167], [224, 172, 138], [198, 144, 110], [170, 118, 86], [141, 85, 54], [92, 56, 38]],
    np.uint8,
)


def is_grayscale(image: np.ndarray, tolerance: float = 2.0) -> bool:
    """True when the RGB channels are (nearly) equal everywhere."""
    x = image.astype(np.int16)
    return float(np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean()) < tolerance


def colorize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grayscale uint8 RGB face tinted with a random skin tone: its lightness kept, the tone's
    chroma (CIELAB a*, b*, jittered) everywhere, fading out in the darkest and brightest pixels."""
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))].reshape(1, 1, 3)
    ab = cv2.cvtColor(tone, cv2.COLOR_RGB2LAB)[0, 0, 1:].astype(np.float32) - 128.0
    ab = ab * rng.uniform(0.6, 1.2) + rng.normal(0.0, 2.0, 2)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    light = lab[..., :1] / 255.0
    fade = np.clip(4.0 * light * (1.0 - light), 0.0, 1.0)
    lab[..., 1:] = 128.0 + ab * fade
    return cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


# -- pseudo-identities ---------------------------------------------------------------------------
def morph_records(a: AlignedRecord, b: AlignedRecord, alpha: float, feather: float = 0.06) -> AlignedRecord:
    """A pseudo-identity: both faces warped to the blended geometry (1-alpha)*a + alpha*b, then
    cross-dissolved inside the face (outside it the first face's warped crop is kept)."""
    size = a.size
    geometry = (1.0 - alpha) * a.landmarks + alpha * b.landmarks
    anchors = border_anchors(size, size, 4)
    warp = MeshWarp(np.concatenate([geometry[:, :2], anchors]), (size, size))
    warped_a = warp.warp(a.image, np.concatenate([a.landmarks[:, :2], anchors])).astype(np.float32)
    warped_b = warp.warp(b.image, np.concatenate([b.landmarks[:, :2], anchors])).astype(np.float32)
    inside = face_mask(geometry, size, feather)[..., None] * alpha
    image = np.clip(warped_a * (1.0 - inside) + warped_b * inside + 0.5, 0, 255).astype(np.uint8)
    return AlignedRecord(image, geometry.astype(np.float32), None, f"morph({a.name},{b.name},{alpha:.3f})")
