"""Identity embeddings of whole images: detect, align to the encoder's template, embed.

Encoders: the built-in dlib ResNet (128-d, offline, differentiable) or a user's ArcFace ONNX
(112x112 in, 512-d out). Embeddings are L2-normalised float32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

from pocketswap.faces.align import align_face
from pocketswap.faces.types import Face


class IdentityEncoder(Protocol):
    embedding_dim: int
    chip_size: int
    template: str

    def embed_chips(self, chips: np.ndarray) -> np.ndarray: ...


def as_chip_batch(chips: np.ndarray, size: int) -> np.ndarray:
    """(B, size, size, 3) uint8 RGB from one chip or a batch; ValueError naming the expected shape otherwise."""
    chips = np.asarray(chips)
    if chips.ndim == 3:
        chips = chips[None]
    if chips.ndim != 4 or chips.shape[1:] != (size, size, 3) or chips.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB chips of shape (B, {size}, {size}, 3), got {chips.dtype} {chips.shape}")
    return chips


def load_encoder(spec: str | Path = "dlib") -> IdentityEncoder:
    """`"dlib"` for the built-in encoder, or a path to an ArcFace-style `.onnx` file."""
    if str(spec) == "dlib":
        from pocketswap.faces.dlib_resnet import DlibEncoder

        return DlibEncoder()
    from pocketswap.faces.arcface_onnx import ArcFaceOnnxEncoder

    return ArcFaceOnnxEncoder(spec)


def embed_faces(image: np.ndarray, faces: list[Face], encoder: IdentityEncoder) -> np.ndarray:
    """(N, D) L2-normalised embeddings of `faces` found in `image`."""
    chips = np.stack([align_face(image, face.keypoints, encoder.chip_size, encoder.template).crop for face in faces])
    return encoder.embed_chips(chips)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine similarity of two embeddings."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def embedding_sha256(embedding: np.ndarray) -> str:
    """SHA-256 of an embedding's float32 bytes (how manifests and checkpoints name an identity)."""
    return hashlib.sha256(np.ascontiguousarray(embedding, np.float32).tobytes()).hexdigest()


def same_person_threshold(encoder: str | Path | None = "dlib") -> float:
    """Cosine distance under which two embeddings are the same person: dlib's documented threshold for
    the built-in encoder; for a user's ArcFace-style model 0.6 (cosine similarity 0.4, a common
    operating point of ArcFace recognisers; not measured here, no ArcFace weights exist offline)."""
    if encoder in (None, "dlib"):
        from pocketswap.faces.dlib_resnet import SAME_PERSON_THRESHOLD

        return SAME_PERSON_THRESHOLD
    return 0.6
