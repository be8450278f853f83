"""Identity embeddings of whole images: detect, align to the encoder's template, embed.

Encoders: the built-in dlib ResNet (128-d, offline, differentiable) or a user's ArcFace ONNX
(112x112 in, 512-d out). Embeddings are L2-normalised float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from pocketswap.core.identity import Identity
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


def same_person_threshold(encoder: str | Path | None = "dlib") -> float:
    """Cosine distance under which two embeddings are the same person: dlib's documented threshold for
    the built-in encoder; for a user's ArcFace-style model 0.6 (cosine similarity 0.4, a common
    operating point of ArcFace recognisers; not measured here, no ArcFace weights exist offline)."""
    if encoder in (None, "dlib"):
        from pocketswap.faces.dlib_resnet import SAME_PERSON_THRESHOLD

        return SAME_PERSON_THRESHOLD
    return 0.6


MAX_EMBEDDING_VALUE = 1e4  # |value| of a face embedding (unit-norm ones are under 1; raw ones a few tens)


def read_identity(
    spec: str | Path,
    embed_dim: int | None = None,
    encoder: str | Path | None = "dlib",
    size: int | None = None,
    template: str = "arcface",
) -> Identity:
    """The :class:`Identity` of an ``.npy`` embedding (or ``.npz`` with one array) or of a face photo /
    ``sample:NAME``, read and detected once: embedded with ``encoder`` ("dlib" or an ArcFace ``.onnx``; None
    means unknown and refuses photos) and, with ``size``, also aligned to a ``size`` px crop on ``template``
    with its 468 landmarks. The one photo -> identity of every stage: ``embed_dim`` (when given) is what the
    model expects; a missing file, no face, a non-numeric, wrong-size, NaN or all-zero embedding is one
    clear error."""
    from pocketswap.core.errors import ConfigError, ImageReadError

    text = str(spec)
    crop = landmarks = None
    if text.endswith((".npy", ".npz")):
        path = Path(text)
        if not path.is_file():
            raise ImageReadError(f"identity embedding {path}: no such file")
        if size is not None:
            raise ConfigError(f"identity {text}: this student needs the identity's photo, not an embedding file")
        try:
            data = np.load(path, allow_pickle=False)
            if hasattr(data, "files") and len(data.files) != 1:
                raise ValueError(f"holds {len(data.files)} arrays ({', '.join(data.files[:4])}), not one")
            emb = data[data.files[0]] if hasattr(data, "files") else data
            if not (np.issubdtype(emb.dtype, np.integer) or np.issubdtype(emb.dtype, np.floating)):
                raise ValueError(f"holds {emb.dtype} values, not real numbers")
            if emb.size and np.abs(emb.astype(np.float64)).max() > MAX_EMBEDDING_VALUE:
                raise ValueError(f"holds values up to {np.abs(emb).max():.3g}, not an embedding's")
        except (OSError, ValueError, IndexError, EOFError) as exc:  # EOFError: an empty .npy
            raise ImageReadError(f"identity embedding {path}: unreadable ({exc or 'empty file'})") from exc
        emb, name, encoder = np.asarray(emb, np.float32).reshape(-1), path.name, None
    else:
        if encoder is None:
            raise ConfigError(f"the checkpoint's embed_dim is {embed_dim}; pass --encoder ARCFACE.onnx to embed {text}")
        from pocketswap.faces.analyzer import shared_analyzer
        from pocketswap.faces.samples import SAMPLE_PREFIX, load_image_or_sample

        image = load_image_or_sample(text)
        face = shared_analyzer().detect_one(image, source=text)
        log.info("identity %s: the face at box %s (score %.2f)", text, [round(float(v)) for v in face.box], face.score)
        emb = embed_faces(image, [face], load_encoder(encoder))[0].astype(np.float32)
        name = text[len(SAMPLE_PREFIX) :] if text.startswith(SAMPLE_PREFIX) else Path(text).name
        if not text.startswith(SAMPLE_PREFIX):
            text = str(Path(text).resolve())
        if size is not None:
            aligned = align_face(image, face.keypoints, size, template)
            crop, landmarks = aligned.crop, aligned.landmarks_in_crop(face.landmarks)
    if emb.ndim != 1 or (embed_dim is not None and emb.shape != (embed_dim,)):
        raise ConfigError(f"identity {spec}: embedding has shape {emb.shape} but the model expects ({embed_dim},)")
    if not np.isfinite(emb).all():
        raise ConfigError(f"identity {spec}: embedding holds NaN or infinite values")
    if not np.linalg.norm(emb) > 1e-6:
        raise ConfigError(f"identity {spec}: embedding is all zeros (no identity)")
    return Identity(name, text, emb, None if encoder is None else str(encoder), crop, landmarks, template)
