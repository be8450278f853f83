"""The teacher interface: swap an identity onto an attribute face, both as aligned-face records.

Records are aligned crops at the dataset size (ArcFace template by default) with their 468
FaceMesh landmarks in crop pixels and an identity embedding. A teacher returns the swapped
crop and a float mask saying where the swap applies (its paste-back region).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError
from pocketswap.faces.align import hull_mask
from pocketswap.faces.types import keypoints_from_landmarks


@dataclass(frozen=True)
class AlignedRecord:
    """One aligned face. image: SxSx3 uint8 RGB crop; landmarks: (468, 3) float32 crop pixels;
    embedding: identity embedding (float32, L2-normalised) or None; name: where it came from."""

    image: np.ndarray
    landmarks: np.ndarray
    embedding: np.ndarray | None = None
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"record image must be HxWx3 uint8, got {self.image.shape} {self.image.dtype}")
        if self.landmarks.ndim != 2 or self.landmarks.shape[0] != 468:
            raise ValueError(f"record landmarks must be (468, 2|3), got {self.landmarks.shape}")

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def keypoints(self) -> np.ndarray:
        """(5, 2) ArcFace-order keypoints in crop pixels (same definition as `Face.keypoints`)."""
        return keypoints_from_landmarks(self.landmarks)


@dataclass(frozen=True)
class TeacherOutput:
    """image: SxSx3 uint8 RGB swapped crop; mask: SxS float32 in [0, 1], where the swap applies."""

    image: np.ndarray
    mask: np.ndarray


def face_mask(landmarks: np.ndarray, size: int, feather: float = 0.04) -> np.ndarray:
    """The default paste-back mask: the feathered hull of the 468 landmarks (SxS float32)."""
    return hull_mask(np.asarray(landmarks, np.float32)[:, :2], size, feather)


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a JSON-able config (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Teacher(ABC):
    """A face-swap teacher working on aligned crops of `size` pixels."""

    name: str = "teacher"
    # True for a teacher whose swaps already carry the frame's light and tone (the paste adds no colour match)
    matches_colour: bool = False

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ConfigError(f"teacher field 'size' must be an integer >= 32, got {size!r}")
        self.size = size

    @abstractmethod
    def swap(self, identity: AlignedRecord, attribute: AlignedRecord) -> TeacherOutput:
        """The identity of `identity` on the pose, expression, lighting and background of `attribute`."""

    def swap_batch(
        self, identities: Sequence[AlignedRecord], attributes: Sequence[AlignedRecord]
    ) -> list[TeacherOutput]:
        """Batched swap; the default runs `swap` per pair (backends override where batching helps)."""
        if len(identities) != len(attributes):
            raise ValueError(f"swap_batch: {len(identities)} identities but {len(attributes)} attributes")
        return [self.swap(i, a) for i, a in zip(identities, attributes, strict=True)]

    def mask(self, attribute: AlignedRecord) -> np.ndarray:
        """The paste-back mask this teacher gives for `attribute` (used for reconstruction pairs)."""
        return face_mask(attribute.landmarks, self.size)

    def config(self) -> dict[str, Any]:
        """JSON-able description of everything that changes this teacher's output."""
        return {"name": self.name, "size": self.size}

    def config_hash(self) -> str:
        return config_hash(self.config())

    def check_record(self, record: AlignedRecord, role: str) -> None:
        if record.image.shape[:2] != (self.size, self.size):
            raise ValueError(
                f"{role} crop is {record.image.shape[1]}x{record.image.shape[0]}, teacher expects {self.size}"
            )


def load_teacher(
    spec: str | Path,
    size: int = 224,
    *,
    identity_encoder: Any = None,
    config: dict[str, Any] | None = None,
    style: str | None = None,
) -> Teacher:
    """Build a teacher from a spec.

    - ``"geometric"``: the built-in training-free teacher (`config` = `GeometricConfig` fields);
    - ``PATH.onnx`` or ``STYLE:PATH.onnx`` (STYLE in inswapper, simswap, ghost): an ONNX swap model
      (`identity_encoder`, an ArcFace encoder with ``embed_chips``, is required; the style is
      detected from the model's signature when not given).
    """
    text = str(spec)
    if text == "geometric":
        from pocketswap.teacher.geometric import GeometricConfig, GeometricTeacher

        return GeometricTeacher(size=size, config=GeometricConfig.from_dict(config or {}))
    from pocketswap.teacher.onnx_teachers import load_onnx_teacher

    given_style, path = onnx_teacher_spec(text)
    return load_onnx_teacher(
        str(path), size=size, identity_encoder=identity_encoder, style=style or given_style, options=config
    )


def onnx_teacher_spec(spec: str) -> tuple[str | None, Path]:
    """``[STYLE:]PATH.onnx`` -> (style or None, path); a clear error for a bad spec or a missing file."""
    from pocketswap.teacher.onnx_teachers import STYLES

    style, sep, rest = spec.partition(":")
    text = rest if sep and style in STYLES else spec
    if not text.endswith(".onnx"):
        raise ConfigError(f"teacher '{spec}': expected 'geometric' or a path to an .onnx model ([STYLE:]PATH.onnx)")
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"teacher '{spec}': no such file {path}")
    return (style if text != spec else None), path
