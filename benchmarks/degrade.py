"""Obviously worse copies of a real photo, to show that each artefact measure sees what people see.

``pocketswap bench quality --check-metrics PHOTOS`` makes, inside each photo's own face, a copy
that is **blurred** (the face shrunk to a 128 px crop, or to half its size, and pasted back, as a small student pastes),
**seamed** (the face a little brighter, pasted with a hard edge), **speckled** (green/purple chroma
noise) and **recoloured** (the face tinted with a soft edge: another person's skin), and scores every
measure of :mod:`pocketswap.distill.artefacts` on each. A measure counts only if it ranks its own
defect worse than the untouched photo on (nearly) every photo.
"""

from __future__ import annotations

import cv2
import numpy as np

from pocketswap.distill.artefacts import artefact_scores

DEFECTS = ("blurred", "seamed", "speckled", "recoloured")
CROP = 128  # the crop a small student is pasted from


def _hull(landmarks: np.ndarray, shape: tuple[int, ...], erode: float = 0.0) -> np.ndarray:
    points = np.asarray(landmarks, np.float64)[:, :2]
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    radius = int(round(erode * np.ptp(points[:, 0])))
    if radius > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    return mask.astype(np.float32)


def _soft(mask: np.ndarray, width: float) -> np.ndarray:
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.03 * width))[..., None]


def degrade(photo: np.ndarray, landmarks: np.ndarray, defect: str, seed: int = 0) -> np.ndarray:
    """``photo`` (HxWx3 uint8 RGB) with ``defect`` put into the face whose ``landmarks`` it shows."""
    width = float(np.ptp(np.asarray(landmarks)[:, 0]))
    image = photo.astype(np.float32)
    if defect == "blurred":
        x0, y0 = np.floor(np.asarray(landmarks)[:, :2].min(axis=0)).astype(int)
        x1, y1 = np.ceil(np.asarray(landmarks)[:, :2].max(axis=0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, photo.shape[1]), min(y1, photo.shape[0])
        box = photo[y0:y1, x0:x1]
        scale = min(0.5, CROP / max(box.shape[:2]))  # a 128 px crop, or half the face where it is smaller
        small = cv2.resize(box, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        soft = image.copy()
        soft[y0:y1, x0:x1] = cv2.resize(small, (box.shape[1], box.shape[0]), interpolation=cv2.INTER_LINEAR)
        alpha = _soft(_hull(landmarks, photo.shape, 0.04), width)
        out = soft * alpha + image * (1 - alpha)
    elif defect == "seamed":
        alpha = _hull(landmarks, photo.shape, 0.06)[..., None]  # a hard edge just inside the outline
        out = image + alpha * 18.0
    elif defect == "speckled":
        lab = cv2.cvtColor(photo.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        noise = np.random.default_rng(seed).normal(0.0, 6.0, lab.shape[:2] + (2,)).astype(np.float32)
        lab[..., 1:] += noise * _hull(landmarks, photo.shape, 0.04)[..., None]
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0
    elif defect == "recoloured":
        lab = cv2.cvtColor(photo.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
        alpha = _soft(_hull(landmarks, photo.shape, 0.06), 3 * width)
        lab = lab + alpha * np.array([-6.0, 8.0, -8.0], np.float32)  # darker, pinker, bluer skin
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0
    else:
        raise ValueError(f"unknown defect {defect!r}; choose one of {', '.join(DEFECTS)}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# Each defect and the measure that must see it: (measure, True if larger is worse).
OWN_MEASURE = {"blurred": ("sharpness", False), "seamed": ("seam", True), "speckled": ("chroma_noise", True),
               "recoloured": ("colour_mismatch", True)}  # fmt: skip


def check_measures(photos: list[tuple[str, np.ndarray]], analyzer) -> dict:
    """Every measure on every defect of every photo, and per defect the share of photos on which its own
    measure ranks the defective copy worse than the untouched photo (the validation of the measures)."""
    from pocketswap.benchmarks.photos import face_chip
    from pocketswap.distill.artefacts import frechet_distance
    from pocketswap.faces.dlib_resnet import DlibEncoder

    scores: dict[str, list[dict[str, float]]] = {d: [] for d in ("none", *DEFECTS)}
    chips: dict[str, list[np.ndarray]] = {d: [] for d in ("none", *DEFECTS)}
    used = []
    for name, photo in photos:
        faces = analyzer.detect(photo)
        if not faces:
            continue
        used.append(name)
        landmarks = faces[0].landmarks
        for defect in ("none", *DEFECTS):
            copy = photo if defect == "none" else degrade(photo, landmarks, defect)
            scores[defect].append(artefact_scores(copy, photo, landmarks))
            chips[defect].append(face_chip(copy, faces[0]))
    if not used:
        from pocketswap.core.errors import NoFaceError

        raise NoFaceError("no face found in any of the photos to check the measures on")
    encoder = DlibEncoder()
    reference = encoder.penultimate(np.stack(chips["none"]))
    report: dict = {"photos": used, "defects": {}}
    for defect, rows in scores.items():
        entry = {key: {"median": float(np.nanmedian([r[key] for r in rows])), "min": float(np.nanmin([r[key] for r in rows])),
                       "max": float(np.nanmax([r[key] for r in rows]))} for key in rows[0]} if rows else {}  # fmt: skip
        if len(used) >= 3:
            entry["frechet_face"] = frechet_distance(encoder.penultimate(np.stack(chips[defect])), reference)
        if defect in OWN_MEASURE:
            key, larger = OWN_MEASURE[defect]
            worse = [
                (r[key] > b[key]) if larger else (r[key] < b[key]) for r, b in zip(rows, scores["none"], strict=True)
            ]
            entry["ranked_worse"] = float(np.mean(worse))
        report["defects"][defect] = entry
    return report
