"""Settings of paired-data generation (`pocketswap teacher generate`): `GenerateConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketswap.config import check_range, from_dict, load_yaml, to_dict
from pocketswap.errors import ConfigError
from pocketswap.teacher.augment import (
    AugmentConfig,
)

log = logging.getLogger(__name__)

SAMPLES = "samples"
CACHE_VERSION = 2
CHUNK = 4  # pairs per worker task


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateConfig:
    """Settings of `pocketswap teacher generate` (YAML keys have the same names)."""

    out: str = ""  # output dataset folder
    faces: str = SAMPLES  # a folder of images (searched recursively) or "samples"
    pairs: int = 1000
    teacher: str = "geometric"  # "geometric" or [STYLE:]PATH.onnx
    teacher_config: dict[str, Any] = field(default_factory=dict)  # the teacher's own options
    size: int = 224  # aligned crop side (ArcFace template)
    seed: int = 0
    workers: int = 0  # processes on this machine (0 or 1: in-process)
    same_identity_share: float = 0.1  # share of same-identity reconstruction pairs
    shard_size: int = 256  # pairs per shard
    encoder: str = "dlib"  # identity embedding stored with each pair: "dlib" or ARCFACE.onnx
    identity_encoder: str | None = None  # ArcFace .onnx for ONNX teachers (defaults to `encoder`)
    detector: str = "auto"  # BlazeFace model: short, full or auto
    min_face_score: float = 0.5
    max_yaw: float = 0.8  # skip profiles: |nose offset between the cheeks| above this (0 frontal, 1 profile)
    identity: str = ""  # personalisation: this photo (or sample:NAME) is every pair's identity; "" = from the pool
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.pairs < 1:
            raise ConfigError(f"config field 'pairs' must be >= 1, got {self.pairs}")
        check_range("size", self.size, 32, 1024)
        if self.seed < 0:
            raise ConfigError(f"config field 'seed' must be >= 0, got {self.seed}")
        check_range("workers", self.workers, 0, 256)
        check_range("same_identity_share", self.same_identity_share, 0.0, 1.0)
        check_range("shard_size", self.shard_size, 1, 1_000_000)
        check_range("min_face_score", self.min_face_score, 0.0, 1.0)
        check_range("max_yaw", self.max_yaw, 0.0, 10.0)
        if self.detector not in ("short", "full", "auto"):
            raise ConfigError(f"config field 'detector' must be short, full or auto, got {self.detector!r}")
        if not self.teacher:
            raise ConfigError("config field 'teacher' must be 'geometric' or a path to an .onnx model")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerateConfig:
        return from_dict(cls, data)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> GenerateConfig:
        """YAML file (optional) with `overrides` (None values ignored) on top."""
        data = load_yaml(path) if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

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
