"""Reading and writing images with clear errors. Images are HxWx3 uint8 RGB in memory."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import cv2
import numpy as np

from pocketswap.core.errors import ImageReadError, OutputError
from pocketswap.core.files import atomic_write_bytes, check_output

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


# Decoded pixels an image may have (an 8K frame is 33 MP): larger ones are refused from their header,
# before decoding, so a small file that decodes to gigabytes (a decompression bomb) costs nothing.
MAX_IMAGE_BYTES = 512 << 20  # a larger file is refused before it is read
MAX_IMAGE_PIXELS = 50_000_000
_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO"}  # what IMAGE_SUFFIXES name (MPO: a camera's JPEG)
_EXIF_ORIENTATION = 0x0112


def inspect_image(
    data: bytes | Path, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int, int]:
    """(width, height, EXIF orientation 1-8) from an encoded image's header (bytes, or a file of which only the
    header is read), without decoding it; raises
    `ImageReadError` for a format the project does not read (GIF, AVIF, ...), an animation or
    multi-page file, or more than ``max_pixels`` pixels."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
                frames = getattr(image, "n_frames", 1) if kind in _FORMATS else 1
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1) if kind in _FORMATS else 1
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{source}: image is over the {max_pixels / 1e6:.0f} MP limit (a decompression bomb?)"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{source}: not an image or corrupt") from exc
    if kind not in _FORMATS:
        raise ImageReadError(f"{source}: {kind} images are not supported; use one of {', '.join(IMAGE_SUFFIXES)}")
    if frames > 1:
        raise ImageReadError(f"{source}: an animated or multi-page image ({frames} frames); give one still")
    if width * height > max_pixels:
        raise ImageReadError(f"{source}: image is {width}x{height} px, over the {max_pixels / 1e6:.0f} MP limit")
    return width, height, orientation if 1 <= orientation <= 8 else 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as a viewer shows it, given its EXIF orientation (a phone portrait stored sideways)."""
    steps = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(steps[orientation](image)) if orientation in steps else image


def decode_image(data: bytes, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes as HxWx3 uint8 RGB, upright per EXIF; checks the header first
    (:func:`inspect_image`) and raises `ImageReadError` with the reason."""
    if len(data) == 0:
        raise ImageReadError(f"{source}: file is empty")
    _, _, orientation = inspect_image(data, source, max_pixels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(f"{source}: not an image or corrupt (OpenCV could not decode it)")
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return to_rgb_uint8(_apply_orientation(decoded, orientation), source=source)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, raising `ImageReadError` with the reason."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a pipe or device); give an image file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageReadError(f"{path}: file is empty")
        if size > MAX_IMAGE_BYTES:
            raise ImageReadError(
                f"{path}: {size / 2**20:.0f} MiB, over the {MAX_IMAGE_BYTES >> 20} MiB limit of an image"
            )
        inspect_image(path, str(path))  # the header alone: a huge file that is no image is refused unread
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path))


def write_image(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image atomically; the format follows the suffix (one of ``IMAGE_SUFFIXES``).
    Creates parent folders; a bad path is one :class:`OutputError` line."""
    path = check_output(path, IMAGE_SUFFIXES, "image")
    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"image {path}: cannot encode an image with suffix '{path.suffix}'")
    return atomic_write_bytes(path, encoded.tobytes())


def png_base64(image_rgb: np.ndarray) -> str:
    """An RGB uint8 image as base64 PNG text (how manifests carry small images)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.asarray(image_rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError("cannot encode the image as PNG")
    return base64.b64encode(png.tobytes()).decode()


def from_png_base64(text: str, source: str, size: int) -> np.ndarray:
    """The ``size`` x ``size`` RGB image of :func:`png_base64` text; `ImageReadError` naming ``source``
    when it is not base64, not an image, or not that size (a larger image is refused before decoding)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise ImageReadError(f"{source}: not base64 ({exc})") from exc
    image = decode_image(data, source, max_pixels=size * size)
    if image.shape[:2] != (size, size):
        raise ImageReadError(f"{source}: the image is {image.shape[1]}x{image.shape[0]}, its 'size' says {size}")
    return image
