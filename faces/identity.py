"""Identity embeddings of whole images: detect, align to the encoder's template, embed.

Encoders: the built-in dlib ResNet (128-d, offline, differentiable) or a user's ArcFace ONNX
(112x112 in, 512-d out). Embeddings are L2-normalised float32.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketswap.faces.align import align_face
from pocketswap.faces.types import Face

log = logging.getLogger(__name__)


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


def same_person(distance: Any, threshold: float | None = None, encoder: str | Path | None = "dlib") -> Any:
    """The one same-person decision: cosine ``distance`` (a number or an array) strictly under ``threshold``
    (default: :func:`same_person_threshold` of ``encoder``). A bool, or a bool array for an array."""
    limit = same_person_threshold(encoder) if threshold is None else threshold
    verdict = np.asarray(distance) < limit
    return bool(verdict) if verdict.ndim == 0 else verdict


def identity_embedding(
    spec: str | Path, embed_dim: int | None = None, encoder: str | Path | None = "dlib"
) -> tuple[np.ndarray, str]:
    """(D,) float32 embedding from an ``.npy`` (or ``.npz`` with one array) or a face photo / ``sample:NAME``
    (embedded with ``encoder``: "dlib" or an ArcFace ``.onnx``; None means unknown and refuses photos). The one
    photo -> embedding of every stage: ``embed_dim`` (when given) is what the model expects; a
    missing file, no face, a non-numeric, wrong-size, NaN or all-zero embedding is one clear error."""
    from pocketswap.errors import ConfigError, ImageReadError

    text = str(spec)
    if text.endswith((".npy", ".npz")):
        path = Path(text)
        if not path.is_file():
            raise ImageReadError(f"identity embedding {path}: no such file")
        try:
            data = np.load(path, allow_pickle=False)
            emb = data[data.files[0]] if hasattr(data, "files") else data
            if not np.issubdtype(emb.dtype, np.number):
                raise ValueError(f"holds {emb.dtype} values, not numbers")
        except (OSError, ValueError, IndexError) as exc:
            raise ImageReadError(f"identity embedding {path}: unreadable ({exc})") from exc
        emb = np.asarray(emb, np.float32).reshape(-1)
        source = f"embedding {path.name}"
    else:
        if encoder is None:
            raise ConfigError(f"the checkpoint's embed_dim is {embed_dim}; pass --encoder ARCFACE.onnx to embed {text}")
        from pocketswap.faces.identity import embed_faces, load_encoder
        from pocketswap.faces.samples import load_image_or_sample

        image = load_image_or_sample(text)
        from pocketswap.faces.analyzer import shared_analyzer

        face = shared_analyzer().detect_one(image, source=text)
        log.info("identity %s: the face at box %s (score %.2f)", text, [round(float(v)) for v in face.box], face.score)
        emb = embed_faces(image, [face], load_encoder(encoder))[0].astype(np.float32)
        source = f"photo {Path(text).name} ({encoder} encoder)"
    if emb.ndim != 1 or (embed_dim is not None and emb.shape != (embed_dim,)):
        raise ConfigError(f"identity {text}: embedding has shape {emb.shape} but the model expects ({embed_dim},)")
    if not np.isfinite(emb).all():
        raise ConfigError(f"identity {text}: embedding holds NaN or infinite values")
    if not np.linalg.norm(emb) > 1e-6:
        raise ConfigError(f"identity {text}: embedding is all zeros (no identity)")
    return emb, source
