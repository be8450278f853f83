"""Settings of paired-data generation (`pocketswap teacher generate`): `GenerateConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pocketswap.core.config import Config, check_range, config_field, to_dict
from pocketswap.core.errors import ConfigError
from pocketswap.teacher.augment import (
    AugmentConfig,
)

log = logging.getLogger(__name__)

SAMPLES = "samples"
CACHE_VERSION = 2
CHUNK = 4  # pairs per worker task


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateConfig(Config):
    """Settings of `pocketswap teacher generate` (YAML keys have the same names)."""

    out: str = config_field("", "output dataset folder")
    faces: str = config_field(SAMPLES, "folder of face images (searched recursively) or 'samples'")
    pairs: int = config_field(1000, "number of pairs")
    teacher: str = config_field("geometric", "'geometric' or [inswapper|simswap|ghost:]PATH.onnx")
    teacher_config: dict[str, Any] = field(default_factory=dict)  # the teacher's own options (YAML only)
    size: int = config_field(224, "aligned crop side (ArcFace template)")
    seed: int = config_field(0, "random seed")
    workers: int = config_field(0, "worker processes on this machine (0 or 1: in-process)")
    same_identity_share: float = config_field(0.1, "share of same-identity reconstruction pairs")
    cycle_share: float = config_field(
        0.0,
        "share of cycle pairs: the frame is the teacher's swap of another face into a photo, the identity that "
        "photo's person, the target the real photo (the teacher's artefacts in the input, never in the target)",
    )
    shard_size: int = config_field(256, "pairs per shard")
    encoder: str = config_field("dlib", "identity embedding stored with each pair: dlib or ARCFACE.onnx")
    identity_encoder: str | None = config_field(None, "ArcFace .onnx used by ONNX teachers (defaults to encoder)")
    detector: str = config_field("auto", "face detector (BlazeFace range)", choices=("short", "full", "auto"))
    min_face_score: float = config_field(0.5, "lowest detector score of a face to use")
    max_yaw: float = config_field(
        0.8, "skip profiles: nose offset between the cheeks above this (0 frontal, 1 profile)"
    )
    identity: str = config_field("", "one photo (or sample:NAME) as every pair's identity (personalisation)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.pairs < 1:
            raise ConfigError(f"config field 'pairs' must be >= 1, got {self.pairs}")
        check_range("size", self.size, 32, 1024)
        if self.seed < 0:
            raise ConfigError(f"config field 'seed' must be >= 0, got {self.seed}")
        check_range("workers", self.workers, 0, 256)
        check_range("same_identity_share", self.same_identity_share, 0.0, 1.0)
        check_range("cycle_share", self.cycle_share, 0.0, 1.0)
        check_range("shard_size", self.shard_size, 1, 1_000_000)
        check_range("min_face_score", self.min_face_score, 0.0, 1.0)
        check_range("max_yaw", self.max_yaw, 0.0, 10.0)
        if self.detector not in ("short", "full", "auto"):
            raise ConfigError(f"config field 'detector' must be short, full or auto, got {self.detector!r}")
        if not self.teacher:
            raise ConfigError("config field 'teacher' must be 'geometric' or a path to an .onnx model")

    def num_shards(self) -> int:
        return (self.pairs + self.shard_size - 1) // self.shard_size

    def shard_pairs(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.pairs, (shard + 1) * self.shard_size))

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the shards' content (not `out` or `workers`)."""
        data = to_dict(self)
        for name in ("out", "workers"):
            data.pop(name)
        return data


# -- sources and analysis ------------------------------------------------------------------------
