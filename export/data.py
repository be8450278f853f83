"""Real inputs for exports: aligned sample faces (parity), calibration crops (int8), identity embeddings.

Nothing is downloaded: faces come from the bundled samples, a dataset folder, an image folder or an
``.npy`` file the user passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.core.errors import ImageReadError, NoFaceError, PocketswapError
from pocketswap.core.imageio import IMAGE_SUFFIXES
from pocketswap.core.spec import PIXELS
from pocketswap.export.common import CalibrationError
from pocketswap.faces.analyzer import shared_analyzer

log = logging.getLogger(__name__)

PARITY_SAMPLES = ("astronaut", "grace_hopper", "lfw_03")
SAMPLES_SPEC = "samples"


def align_photo(image: np.ndarray, size: int, template: str, source: str = "image") -> np.ndarray:
    """Detect the largest face and align it to ``template`` at ``size`` px (raises NoFaceError)."""
    return align_photo_landmarks(image, size, template, source)[0]


def align_photo_landmarks(
    image: np.ndarray, size: int, template: str, source: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`align_photo` and the face's (468, 3) landmarks in crop pixels."""
    from pocketswap.faces.align import align_face

    face = shared_analyzer().detect_one(image, source=source)
    aligned = align_face(image, face.keypoints, size, template)
    return aligned.crop, aligned.landmarks_in_crop(face.landmarks)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=8)
def _sample_faces(names: tuple[str, ...], size: int, template: str) -> tuple[tuple[str, np.ndarray, Any], ...]:
    from pocketswap.faces import samples

    out = []
    for name in names:
        image = samples.load(name)
        try:
            out.append((f"face:{name}", *align_photo_landmarks(image, size, template, source=name)))
        except (NoFaceError, ImportError, PocketswapError) as exc:
            log.warning("%s: %s; using a centre crop for parity", name, exc)
            out.append((f"centre:{name}", centre_crop(image, size), None))
    return tuple(out)


def sample_faces(
    size: int, template: str = "arcface", names: tuple[str, ...] = PARITY_SAMPLES
) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(case name, SxSx3 uint8 RGB crop, (468, 3) crop landmarks or None for a centre crop) for bundled
    sample faces aligned like the student's input."""
    return list(_sample_faces(tuple(names), int(size), template))


def sample_crops(
    size: int, template: str = "arcface", names: tuple[str, ...] = PARITY_SAMPLES
) -> list[tuple[str, np.ndarray]]:
    """(case name, SxSx3 uint8 RGB crop) of :func:`sample_faces`."""
    return [(case, crop) for case, crop, _ in sample_faces(size, template, names)]


def to_model_input(crops: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW in [-1, 1] (the students' normalisation)."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    return np.ascontiguousarray(PIXELS.to_model(crops.transpose(0, 3, 1, 2)))


@dataclass
class CalibrationSet:
    """Aligned crops (N,S,S,3 uint8) and, when the source has them, identity embeddings (N,D)."""

    crops: np.ndarray
    embeddings: np.ndarray | None
    source: str


def load_calibration(spec: str | Path | None, size: int, template: str = "arcface", limit: int = 32) -> CalibrationSet:
    """Calibration crops from ``samples`` (bundled faces), a dataset folder (``manifest.json`` + shards),
    a folder of photos (faces are detected and aligned) or an ``.npy`` of uint8 NxSxSx3 crops."""
    if spec is None or str(spec) == "":
        raise CalibrationError(
            "int8 needs calibration data: pass --calibration DATASET|DIR|crops.npy (or 'samples' for the bundled faces)"
        )
    if str(spec) == SAMPLES_SPEC:
        from pocketswap.faces import samples

        names = tuple(n for n in samples.names() if n not in PARITY_SAMPLES)[:limit]  # disjoint from parity faces
        crops = [c for _, c in sample_crops(size, template, names)]
        return CalibrationSet(np.stack(crops), None, f"{len(crops)} bundled sample faces")
    path = Path(spec)
    if not path.exists():
        raise CalibrationError(f"calibration data {path}: no such file or directory")
    if path.is_file() and path.suffix == ".npy":
        return CalibrationSet(_npy_crops(path, size, limit), None, str(path))
    if path.is_dir() and (path / "manifest.json").is_file():
        return _dataset_crops(path, size, limit)
    if path.is_dir():
        return _folder_crops(path, size, template, limit)
    raise CalibrationError(f"calibration data {path}: expected a dataset folder, an image folder or a .npy of crops")


def _npy_crops(path: Path, size: int, limit: int) -> np.ndarray:
    try:
        crops = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"calibration data {path}: unreadable .npy ({exc})") from exc
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8 or len(crops) == 0:
        raise CalibrationError(
            f"calibration data {path}: expected uint8 NxSxSx3 RGB crops, got {crops.dtype} {crops.shape}"
        )
    return np.stack([_resize(c, size) for c in crops[:limit]])


def _dataset_crops(path: Path, size: int, limit: int) -> CalibrationSet:
    from pocketswap.core.dataset import DatasetReader

    crops, embeddings = [], []
    for sample in DatasetReader(path).iter_samples():
        crops.append(_resize(sample.attribute, size))
        embeddings.append(sample.id_embedding)
        if len(crops) >= limit:
            break
    if not crops:
        raise CalibrationError(f"calibration dataset {path} has no samples")
    return CalibrationSet(np.stack(crops), np.stack(embeddings).astype(np.float32), f"dataset {path}")


def _folder_crops(path: Path, size: int, template: str, limit: int) -> CalibrationSet:
    from pocketswap.core.imageio import read_image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    crops, skipped = [], 0
    for file in files:
        try:
            image = read_image(file)
            crops.append(align_photo(image, size, template, source=str(file)))
        except (NoFaceError, ImageReadError) as exc:
            skipped += 1
            log.debug("calibration: skipping %s (%s)", file, exc)
        if len(crops) >= limit:
            break
    if not crops:
        raise CalibrationError(f"calibration folder {path}: no image with a detectable face among {len(files)} file(s)")
    if skipped:
        log.info("calibration: %d image(s) without a face skipped", skipped)
    return CalibrationSet(np.stack(crops), None, f"folder {path}")


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    crop = np.asarray(crop)
    if crop.shape[:2] == (size, size):
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR)


def load_student(source: str | Path):
    """(StudentNet in eval mode, StudentConfig, extra, checkpoint dir, sha256 of its safetensors)."""
    from pocketswap.core.checkpoint import WEIGHTS_NAME, resolve_checkpoint
    from pocketswap.core.files import file_sha256
    from pocketswap.student.checkpoint import load_checkpoint

    directory = resolve_checkpoint(source)
    net, config, extra = load_checkpoint(directory)
    return net.eval(), config, extra, directory, file_sha256(directory / WEIGHTS_NAME)
