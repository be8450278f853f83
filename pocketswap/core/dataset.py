"""The paired-face dataset format shared by the teacher (writer) and distill (reader) stages.

A dataset is a folder with WebDataset-style tar shards and a ``manifest.json``::

    DATASET/manifest.json
    DATASET/shard-000000.tar   # KEY.id.png KEY.attr.png KEY.out.png KEY.mask.png
    DATASET/shard-000001.tar   # KEY.id_emb.npy KEY.attr_lmk.npy KEY.json   (one sample per KEY)

- ``id.png``: identity crop; ``attr.png``: attribute crop (the student's input); ``out.png``: the
  teacher's swap (the student's target); ``mask.png``: 8-bit blend mask; all SxS, RGB/grey.
- ``id_emb.npy``: (D,) float32 L2-normalised identity embedding (encoder named in the manifest).
- ``attr_lmk.npy``: (468, 3) float32 FaceMesh landmarks of the attribute crop, crop pixels.
- ``id_lmk.npy`` (optional; needed by warped-identity students):
  (468, 3) float32 landmarks of the identity crop, crop pixels.
- ``KEY.json``: per-sample metadata (teacher name and config hash, pair type, source names, ...).

The shards, their members' codecs and the deterministic writer are :mod:`pocketswap.core.shards`; this module is
the manifest and `DatasetReader`, which streams samples shard by shard without loading the dataset into memory.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pocketswap.core.errors import ConfigError
from pocketswap.core.files import atomic_write_json, file_sha256
from pocketswap.core.identity import Identity
from pocketswap.core.jsonio import check_schema, read_json
from pocketswap.core.shards import DatasetError, Sample, ShardInfo, iter_shard

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "pocketswap-paired-faces"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# -- manifest ------------------------------------------------------------------------------------
# The types inside the fields above that readers use (pocketswap.core.jsonio's schema).
_NESTED_SCHEMA = {
    "shards": [{"name": str, "samples": int, "bytes": int, "sha256": str}],
    "embedding": {"dim": int, "encoder": (str, None)},
    "template": str,
    "identities": [str],
    "identity": (dict, None),
}
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "size": int,
    "num_samples": int,
    "shards": list,
    "teacher": dict,
    "embedding": dict,
    "seed": int,
    "counts": dict,
    "identities": list,
    "skipped": list,
}


@dataclass
class DatasetManifest:
    """A dataset's ``manifest.json``: what the teacher wrote and every reader trusts.

    ``identity`` is set on one-identity (personalisation) datasets: ``{"source", "name", "embedding"}``.
    ``extra`` keeps the informational fields (teacher config fingerprint, version, counts by kind)."""

    size: int
    num_samples: int
    shards: list[ShardInfo]
    teacher: dict[str, Any]
    embedding: dict[str, Any]  # {"encoder": name, "dim": D}
    seed: int
    counts: dict[str, Any]
    identities: list[str]
    skipped: list[Any]
    template: str = "arcface"
    identity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding["dim"])

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> DatasetManifest:
        """Parse and check a manifest; DatasetError names the first bad field."""
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: expected a JSON object")
        for name, kind in _MANIFEST_FIELDS.items():
            if name not in data:
                raise DatasetError(f"{where}: missing field '{name}'")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise DatasetError(f"{where}: field '{name}' has the wrong type ({type(data[name]).__name__})")
        check_schema(data, _NESTED_SCHEMA, where, error=DatasetError)
        if data["format"] != FORMAT:
            raise DatasetError(f"{where}: field 'format' is {data['format']!r}, expected {FORMAT!r}")
        if data["format_version"] > FORMAT_VERSION:
            raise DatasetError(
                f"{where}: field 'format_version' is {data['format_version']}, this pocketswap reads <= {FORMAT_VERSION}"
            )
        shards = []
        for i, shard in enumerate(data["shards"]):
            if not isinstance(shard, dict) or not {"name", "samples", "bytes", "sha256"} <= set(shard):
                raise DatasetError(f"{where}: field 'shards[{i}]' needs name, samples, bytes and sha256")
            shards.append(
                ShardInfo(str(shard["name"]), int(shard["samples"]), int(shard["bytes"]), str(shard["sha256"]))
            )
        total = sum(s.samples for s in shards)
        if total != data["num_samples"]:
            raise DatasetError(f"{where}: field 'num_samples' is {data['num_samples']} but the shards hold {total}")
        if "dim" not in data["embedding"]:
            raise DatasetError(f"{where}: field 'embedding.dim' is missing")
        if data.get("identity") is not None:
            try:
                Identity.from_record(data["identity"], f"{where}: field 'identity'")
            except ConfigError as exc:
                raise DatasetError(str(exc)) from exc
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "shards"}
        return cls(
            shards=shards,
            extra={k: v for k, v in data.items() if k not in known and k != "shards"},
            **{k: v for k, v in data.items() if k in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": self.format, "format_version": self.format_version, "size": self.size,
            "template": self.template, "seed": self.seed, "num_samples": self.num_samples,
            "counts": self.counts, "teacher": self.teacher, "embedding": self.embedding,
            "shards": [s.to_dict() for s in self.shards], "identities": self.identities, "skipped": self.skipped,
        }  # fmt: skip
        if self.identity is not None:
            out["identity"] = self.identity
        return out | self.extra


def read_dataset_manifest(root: str | Path) -> DatasetManifest:
    """The manifest of the dataset folder ``root`` (DatasetError if missing or malformed)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root}: not a dataset (no {MANIFEST}; is generation finished?)")
    return DatasetManifest.from_dict(read_json(path, "dataset manifest", error=DatasetError), str(path))


def write_dataset_manifest(root: str | Path, manifest: DatasetManifest) -> Path:
    """Write ``root/manifest.json`` atomically (checked by the same rules as reading it)."""
    data = manifest.to_dict()
    DatasetManifest.from_dict(data)
    return atomic_write_json(Path(root) / MANIFEST, data)


def shuffle_stream(stream: Iterable[T], buffer: int, rng: np.random.Generator) -> Iterator[T]:
    """Shuffle a stream through a `buffer`-sized reservoir (memory stays bounded); `buffer <= 1` passes it through.
    The draws from `rng` depend only on the stream length, so a seeded shuffle is reproducible."""
    if buffer <= 1:
        yield from stream
        return
    pool: list[T] = []
    for item in stream:
        if len(pool) < buffer:
            pool.append(item)
            continue
        index = int(rng.integers(len(pool)))
        pool[index], item = item, pool[index]
        yield item
    for index in rng.permutation(len(pool)):
        yield pool[index]


class DatasetReader:
    """Streams samples from a dataset folder.

    >>> reader = DatasetReader("data/pairs")
    >>> reader.size, reader.embedding_dim, len(reader)
    >>> for sample in reader.iter_samples(shuffle=True, seed=epoch, rank=r, world_size=n):
    ...     sample.attribute, sample.id_embedding, sample.output, sample.mask
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_dataset_manifest(self.root)
        self.shards = [self.root / s.name for s in self.manifest.shards]
        missing = [p.name for p in self.shards if not p.is_file()]
        if missing:
            raise DatasetError(f"{self.root}: manifest lists missing shard(s): {', '.join(missing[:5])}")
        damaged = [
            f"{p.name} ({p.stat().st_size} bytes, manifest: {info.bytes})"
            for info, p in zip(self.manifest.shards, self.shards, strict=True)
            if p.stat().st_size != info.bytes
        ]
        if damaged:
            raise DatasetError(
                f"{self.root}: damaged shard(s), size differs from the manifest: {', '.join(damaged[:5])}; "
                "re-run the same `pocketswap teacher generate --out` command to regenerate them"
            )

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples()

    def iter_samples(
        self,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
    ) -> Iterator[Sample]:
        """Stream decoded samples. With `shuffle`, shard order is permuted (by `seed`) and samples
        pass through a `shuffle_buffer`-sized reservoir; `rank`/`world_size` select a shard subset
        (every rank must pass the same `seed` so the subsets stay disjoint). Memory stays bounded
        by one shuffle buffer."""
        rng = np.random.default_rng(seed)
        shards = list(self.shards)
        if shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        shards = shards[rank::world_size] if world_size > 1 else shards
        stream = (sample for path in shards for sample in iter_shard(path))
        yield from shuffle_stream(stream, shuffle_buffer if shuffle else 0, rng)

    def verify(self, deep: bool = False) -> dict[str, Any]:
        """Check shard sizes and hashes (and with `deep`, decode every sample and check shapes).
        Returns a report; raises DatasetError on the first problem."""
        size = self.size
        checked = 0
        for info, path in zip(self.manifest.shards, self.shards, strict=True):
            if path.stat().st_size != info.bytes or file_sha256(path) != info.sha256:
                raise DatasetError(f"{path}: size or sha256 differs from the manifest (corrupt or modified)")
            if not deep:
                checked += info.samples
                continue
            count = 0
            for sample in iter_shard(path):
                for name in ("identity", "attribute", "output"):
                    if getattr(sample, name).shape != (size, size, 3):
                        raise DatasetError(f"{path.name}:{sample.key}: {name} is {getattr(sample, name).shape}")
                if sample.mask.shape != (size, size):
                    raise DatasetError(f"{path.name}:{sample.key}: mask is {sample.mask.shape}")
                if sample.id_embedding.shape != (self.embedding_dim,):
                    raise DatasetError(f"{path.name}:{sample.key}: id_emb is {sample.id_embedding.shape}")
                if sample.attr_landmarks.shape != (468, 3):
                    raise DatasetError(f"{path.name}:{sample.key}: attr_lmk is {sample.attr_landmarks.shape}")
                count += 1
            if count != info.samples:
                raise DatasetError(f"{path.name}: holds {count} samples, manifest says {info.samples}")
            checked += count
        return {"shards": len(self.shards), "samples": checked, "deep": deep}
