"""Reading and writing images with clear errors. Images are HxWx3 uint8 RGB in memory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pocketswap.errors import ImageReadError, OutputError
from pocketswap.files import atomic_write_bytes, check_output

# Image files every command reads and writes (OpenCV's codecs).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

MIN_IMAGE_SIDE = 32


def to_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert grayscale, RGBA, 16-bit or float images to HxWx3 uint8 RGB (never rejects them)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ImageReadError(f"{source}: expected a 2-D or 3-D image array, got {getattr(image, 'shape', type(image))}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0  # composite on white
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    elif channels != 3:
        raise ImageReadError(f"{source}: unsupported number of channels {channels}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{source}: image is {image.shape[1]}x{image.shape[0]} px, too small (need at least {MIN_IMAGE_SIDE} px a side)"
        )
    return np.ascontiguousarray(image)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, raising `ImageReadError` with the reason."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageReadError(f"{path}: file is empty")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(f"{path}: not an image or corrupt (OpenCV could not decode it)")
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return to_rgb_uint8(decoded, source=str(path))


def write_image(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image atomically; the format follows the suffix (one of ``IMAGE_SUFFIXES``).
    Creates parent folders; a bad path is one :class:`OutputError` line."""
    path = check_output(path, IMAGE_SUFFIXES, "image")
    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"image {path}: cannot encode an image with suffix '{path.suffix}'")
    return atomic_write_bytes(path, encoded.tobytes())
