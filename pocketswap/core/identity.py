"""The identity a model swaps in, as one typed object stored whole wherever it travels.

An :class:`Identity` is made from one reading of a photo (detect, align, embed) and written as the same
record into a personalisation dataset's manifest, the checkpoint trained on it (``extra["identity"]``)
and the artifacts exported from it (``source["identity"]``), so later stages never read the photo again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError, ImageReadError

LANDMARK_COUNT = 468  # FaceMesh points


def embedding_sha256(embedding: np.ndarray) -> str:
    """SHA-256 of an embedding's float32 bytes (how manifests and checkpoints name an identity)."""
    return hashlib.sha256(np.ascontiguousarray(embedding, np.float32).tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class Identity:
    """One person's identity: ``embedding`` (D,) float32 from ``encoder``; ``crop`` the aligned SxSx3 uint8
    RGB face at ``template`` and ``landmarks`` its (468, 2) FaceMesh points in crop pixels (None when it came
    from an embedding file); ``name`` and ``source`` (the photo's path or ``sample:NAME``) say whose it is."""

    name: str
    source: str
    embedding: np.ndarray
    encoder: str | None = None
    crop: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    template: str = "arcface"

    def __post_init__(self) -> None:
        embedding = np.asarray(self.embedding, np.float32).ravel()
        if embedding.size == 0 or not np.isfinite(embedding).all():
            raise ConfigError(f"identity {self.name!r}: field 'embedding' must be finite numbers")
        object.__setattr__(self, "embedding", embedding)
        if (self.crop is None) != (self.landmarks is None):
            raise ConfigError(f"identity {self.name!r}: fields 'crop' and 'landmarks' come together")
        if self.crop is not None:
            crop = np.asarray(self.crop)
            if crop.ndim != 3 or crop.shape[0] != crop.shape[1] or crop.shape[2] != 3 or crop.dtype != np.uint8:
                raise ConfigError(f"identity {self.name!r}: field 'crop' must be SxSx3 uint8, got {crop.shape}")
            landmarks = np.asarray(self.landmarks, np.float32)
            if landmarks.ndim != 2 or landmarks.shape[0] != LANDMARK_COUNT or landmarks.shape[1] < 2:
                raise ConfigError(f"identity {self.name!r}: field 'landmarks' must be ({LANDMARK_COUNT}, 2)")
            object.__setattr__(self, "landmarks", np.ascontiguousarray(landmarks[:, :2]))

    @property
    def sha256(self) -> str:
        """The embedding's hash: the name of this identity in manifests and checkpoints."""
        return embedding_sha256(self.embedding)

    def face(self, size: int, template: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(crop, landmarks) when stored at ``size`` px on ``template``, else None (read the photo again)."""
        if self.crop is None or self.crop.shape[0] != size or self.template != template:
            return None
        return self.crop, self.landmarks

    def to_record(self) -> dict[str, Any]:
        """The JSON record (the crop as base64 PNG) that :meth:`from_record` reads back."""
        from pocketswap.core.imageio import png_base64

        record: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "encoder": self.encoder,
            "embedding_sha256": self.sha256,
            "embedding": [float(v) for v in self.embedding],
        }
        if self.crop is not None:
            record["face"] = {
                "template": self.template,
                "size": int(self.crop.shape[0]),
                "png_base64": png_base64(self.crop),
                "landmarks": np.round(self.landmarks.astype(np.float64), 3).tolist(),
            }
        return record

    @classmethod
    def from_record(cls, record: Any, where: str = "identity") -> Identity:
        """An Identity from its record; ConfigError naming ``where`` and the field when malformed or when
        ``embedding_sha256`` does not match the embedding."""
        from pocketswap.core.imageio import from_png_base64

        if not isinstance(record, dict):
            raise ConfigError(f"{where}: the identity record must be an object")
        missing = [k for k in ("name", "source", "embedding") if k not in record]
        if missing:
            raise ConfigError(f"{where}: the identity record lacks field '{missing[0]}'")
        face, crop, landmarks, template = record.get("face"), None, None, "arcface"
        try:
            embedding = np.asarray(record["embedding"], np.float32)
            if face is not None:
                template = str(face["template"])
                crop = from_png_base64(face["png_base64"], f"{where}: field 'face'", int(face["size"]))
                landmarks = np.asarray(face["landmarks"], np.float32)
        except (KeyError, TypeError, ValueError, ImageReadError) as exc:
            raise ConfigError(f"{where}: the identity record is malformed ({exc})") from exc
        identity = cls(str(record["name"]), str(record["source"]), embedding, record.get("encoder"), crop, landmarks,
                       template)  # fmt: skip
        stated = record.get("embedding_sha256")
        if stated is not None and stated != identity.sha256:
            raise ConfigError(f"{where}: field 'embedding_sha256' does not match the identity's embedding")
        return identity


__all__ = ["LANDMARK_COUNT", "Identity", "embedding_sha256"]
