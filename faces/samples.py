"""Sample faces that ship inside installed wheels (nothing is downloaded).

- ``astronaut``: scikit-image's NASA portrait of Eileen Collins (public domain), 512x512.
- ``grace_hopper``: matplotlib's sample photo, 512x600.
- ``camera``: scikit-image's cameraman (a profile face behind a camera, a hard case).
- ``lfw_00`` ... ``lfw_99``: scikit-image's 25x25 LFW face crops, upscaled 4x and padded
  so a detector sees a whole head (they are tiny and blurry: useful as extra identities).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pocketswap.core.errors import ImageReadError
from pocketswap.core.imageio import read_image, to_rgb_uint8

NUM_LFW = 100
PORTRAITS = ("astronaut", "grace_hopper", "camera")


def names() -> list[str]:
    """All sample names, portraits first."""
    return [*PORTRAITS, *(f"lfw_{i:02d}" for i in range(NUM_LFW))]


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    from skimage.data import lfw_subset

    return lfw_subset()[:NUM_LFW]  # the first 100 are faces, the rest are not


def load(name: str) -> np.ndarray:
    """Load a sample face by name as HxWx3 uint8 RGB."""
    if name == "astronaut":
        from skimage.data import astronaut

        return to_rgb_uint8(astronaut(), name)
    if name == "camera":
        from skimage.data import camera

        return to_rgb_uint8(camera(), name)
    if name == "grace_hopper":
        import matplotlib

        return read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    if name.startswith("lfw_") and name[4:].isdigit() and int(name[4:]) < NUM_LFW:
        face = _lfw_faces()[int(name[4:])]
        face = cv2.resize(face.astype(np.float32), (100, 100), interpolation=cv2.INTER_CUBIC)
        face = cv2.copyMakeBorder(face, 30, 30, 30, 30, cv2.BORDER_REPLICATE)
        return to_rgb_uint8(np.clip(face, 0.0, 1.0), name)
    raise ImageReadError(f"unknown sample '{name}'; choose one of: {', '.join(PORTRAITS)}, lfw_00..lfw_{NUM_LFW - 1}")


SAMPLE_PREFIX = "sample:"


def load_image_or_sample(spec: str) -> np.ndarray:
    """Read an image path, or a bundled sample written as ``sample:NAME`` (e.g. ``sample:astronaut``)."""
    if spec.startswith(SAMPLE_PREFIX):
        return load(spec[len(SAMPLE_PREFIX) :])
    return read_image(spec)
