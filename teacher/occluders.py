"""Occluders for the teacher's training pairs: hands, sunglasses and textured shapes over part of the face
(:func:`make_occluder`, configured by :class:`~pocketswap.teacher.augment.OccluderConfig`), and the skin tone
a hand takes (:func:`skin_tone`)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pocketswap.faces.types import LEFT_EYE_RING, RIGHT_EYE_RING, inter_ocular
from pocketswap.teacher.augment import OccluderConfig
from pocketswap.teacher.base import AlignedRecord, face_mask


@dataclass(frozen=True)
class Occluder:
    """An occluder layer: rgb (SxSx3 float32 0..255) and alpha (SxS float32 in [0, 1])."""

    rgb: np.ndarray
    alpha: np.ndarray
    kind: str

    def over(self, image: np.ndarray) -> np.ndarray:
        a = self.alpha[..., None]
        return np.clip(self.rgb * a + image.astype(np.float32) * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def _texture(
    rng: np.random.Generator, size: int, base: np.ndarray, textures: list[np.ndarray], plain: bool = False
) -> np.ndarray:
    """Occluder texture: a flat colour with noise and a gradient, stripes, or a patch of a real image."""
    choice = 0 if plain else (rng.integers(3) if textures else rng.integers(2))
    if choice == 2:
        source = textures[int(rng.integers(len(textures)))]
        patch = cv2.resize(source, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        return np.ascontiguousarray(np.rot90(patch, int(rng.integers(4))))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 1.0 + 0.35 * (rng.uniform(-1, 1) * (xs - 0.5) + rng.uniform(-1, 1) * (ys - 0.5))
    tex = base[None, None, :] * shade[..., None]
    if choice == 1:  # stripes
        period = rng.uniform(0.04, 0.15)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * rng.uniform(-1, 1) + ys) / period)
        other = rng.uniform(0, 255, size=3).astype(np.float32)
        tex = tex * stripes[..., None] + other * (1.0 - stripes[..., None])
    noise = cv2.GaussianBlur(rng.normal(0.0, 12.0, size=(size, size)).astype(np.float32), (0, 0), 1.0)
    return np.clip(tex + noise[..., None], 0, 255).astype(np.float32)


def _shape_mask(
    rng: np.random.Generator, kind: str, size: int, centre: np.ndarray, scale: float, landmarks: np.ndarray
) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    angle = rng.uniform(0, 180)
    c = tuple(int(round(v)) for v in centre)
    if kind == "rectangle":
        w, h = scale * rng.uniform(0.3, 1.0), scale * rng.uniform(0.3, 1.0)
        box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (w, h), angle))
        cv2.fillConvexPoly(mask, np.round(box).astype(np.int32), 255)
    elif kind == "ellipse":
        axes = (int(scale * rng.uniform(0.15, 0.5)), int(scale * rng.uniform(0.15, 0.5)))
        cv2.ellipse(mask, c, axes, angle, 0, 360, 255, -1)
    elif kind == "hand":
        # Palm ellipse plus four fingers and a thumb (thick lines with round caps), rotated.
        palm = scale * 0.34
        cv2.ellipse(mask, c, (int(palm), int(palm * 1.2)), angle, 0, 360, 255, -1)
        direction = np.deg2rad(angle - 90)
        for k, offset in enumerate(np.linspace(-0.6, 0.6, 4)):
            a = direction + offset * 0.35
            base = centre + palm * np.array([np.cos(a), np.sin(a)])
            length = palm * rng.uniform(0.9, 1.5) * (1.0 - 0.15 * abs(k - 1.5))
            tip = base + length * np.array([np.cos(a), np.sin(a)])
            cv2.line(
                mask, tuple(np.round(base).astype(int)), tuple(np.round(tip).astype(int)), 255, max(2, int(palm * 0.32))
            )
        a = direction + (np.pi / 2 if rng.random() < 0.5 else -np.pi / 2)
        base = centre + palm * 0.8 * np.array([np.cos(a), np.sin(a)])
        tip = base + palm * 0.9 * np.array([np.cos(a - 0.5), np.sin(a - 0.5)])
        cv2.line(
            mask, tuple(np.round(base).astype(int)), tuple(np.round(tip).astype(int)), 255, max(2, int(palm * 0.36))
        )
    else:  # sunglasses: two lenses over the eyes plus a bridge
        eyes = [landmarks[list(ring), :2].mean(0) for ring in (RIGHT_EYE_RING, LEFT_EYE_RING)]
        iod = max(float(np.linalg.norm(eyes[1] - eyes[0])), 4.0)
        tilt = float(np.degrees(np.arctan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0])))
        lens = (int(iod * rng.uniform(0.38, 0.5)), int(iod * rng.uniform(0.28, 0.38)))
        for eye in eyes:
            cv2.ellipse(mask, tuple(np.round(eye).astype(int)), lens, tilt, 0, 360, 255, -1)
        cv2.line(
            mask,
            tuple(np.round(eyes[0]).astype(int)),
            tuple(np.round(eyes[1]).astype(int)),
            255,
            max(2, int(iod * 0.08)),
        )
    return mask


def make_occluder(
    rng: np.random.Generator,
    landmarks: np.ndarray,
    size: int,
    cfg: OccluderConfig,
    textures: list[np.ndarray] | None = None,
    skin_tones: list[np.ndarray] | None = None,
) -> Occluder:
    """A random occluder over part of the face described by `landmarks` (crop pixels)."""
    textures = textures or []
    kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
    hull = face_mask(landmarks, size, 0.0) > 0.5
    hull_area = max(float(hull.sum()), 1.0)
    iod = max(inter_ocular(landmarks), 4.0)
    xy = landmarks[:, :2]
    mask = np.zeros((size, size), np.uint8)
    scale = iod * rng.uniform(1.0, 2.2)
    for _ in range(4):  # shrink until it covers at most max_cover of the face
        centre = xy[int(rng.integers(len(xy)))] + rng.normal(0.0, 0.3 * iod, size=2)
        mask = _shape_mask(rng, kind, size, centre, scale, landmarks)
        if (mask[hull] > 0).sum() / hull_area <= cfg.max_cover:
            break
        scale *= 0.7
    if kind == "hand" and skin_tones:
        base = skin_tones[int(rng.integers(len(skin_tones)))].astype(np.float32)
    elif kind == "sunglasses":
        base = rng.uniform(5, 60, size=3).astype(np.float32)
    else:
        base = rng.uniform(0, 255, size=3).astype(np.float32)
    rgb = _texture(rng, size, base, textures, plain=kind in ("hand", "sunglasses"))
    if kind == "hand":  # soft shading so it is not a flat cut-out
        rgb = rgb * (0.85 + 0.15 * cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), iod * 0.2)[..., None])
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)
    return Occluder(np.clip(rgb, 0, 255).astype(np.float32), alpha.astype(np.float32), kind)


def skin_tone(record: AlignedRecord) -> np.ndarray:
    """Median RGB of the cheeks/nose area (inside the hull, away from eyes and mouth)."""
    xy = record.landmarks[:, :2]
    points = xy[[50, 280, 4, 101, 330]]  # cheeks and nose
    cols = np.clip(np.round(points).astype(int), 0, record.size - 1)
    return np.median(record.image[cols[:, 1], cols[:, 0]].astype(np.float32), axis=0)
