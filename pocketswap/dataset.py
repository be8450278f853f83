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

Shards are written to a temporary file and renamed when complete, with fixed tar metadata
(mtime 0, uid/gid 0, sorted member order), so the same samples always give identical bytes.
`DatasetReader` streams samples shard by shard without loading the dataset into memory.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from pocketswap.errors import PocketswapError
from pocketswap.files import PendingFile, atomic_write_json, file_sha256

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "pocketswap-paired-faces"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.tar"
# Member suffixes in the order they are written.
MEMBERS = ("id.png", "attr.png", "out.png", "mask.png", "id_emb.npy", "attr_lmk.npy", "json")
OPTIONAL_MEMBERS = ("id_lmk.npy",)  # written after MEMBERS when the sample has them


class DatasetError(PocketswapError):
    """A dataset folder, manifest or shard is missing, incomplete or malformed."""


@dataclass
class Sample:
    """One training pair. Images are SxSx3 uint8 RGB; mask SxS float32 in [0, 1]."""

    key: str
    identity: np.ndarray
    attribute: np.ndarray
    output: np.ndarray
    mask: np.ndarray
    id_embedding: np.ndarray
    attr_landmarks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    id_landmarks: np.ndarray | None = None  # (468, 3) identity crop landmarks (optional member)


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


# -- encoding ------------------------------------------------------------------------------------
def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DatasetError("cannot encode a PNG")
    return data.tobytes()


def _unpng(data: bytes, color: bool, where: str) -> np.ndarray:
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise DatasetError(f"{where}: corrupt PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color else image


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _unnpy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{where}: corrupt .npy ({exc})") from exc


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(mask, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """Tar members (name, bytes) of one sample, in `MEMBERS` order."""
    if not sample.key or "." in sample.key or "/" in sample.key:
        raise ValueError(f"sample key must be non-empty without '.' or '/', got {sample.key!r}")
    payload = {
        "id.png": _png(sample.identity),
        "attr.png": _png(sample.attribute),
        "out.png": _png(sample.output),
        "mask.png": _png(mask_to_uint8(sample.mask)),
        "id_emb.npy": _npy(np.asarray(sample.id_embedding, np.float32)),
        "attr_lmk.npy": _npy(np.asarray(sample.attr_landmarks, np.float32)),
        "json": json.dumps(sample.meta, sort_keys=True, separators=(",", ":")).encode(),
    }
    if sample.id_landmarks is not None:
        payload["id_lmk.npy"] = _npy(np.asarray(sample.id_landmarks, np.float32))
    return [
        (f"{sample.key}.{suffix}", payload[suffix]) for suffix in (*MEMBERS, *OPTIONAL_MEMBERS) if suffix in payload
    ]


def decode_sample(key: str, members: dict[str, bytes], where: str = "") -> Sample:
    """Build a `Sample` from its members (suffix -> bytes); DatasetError names what is missing."""
    where = f"{where}:{key}" if where else key
    missing = [s for s in MEMBERS if s not in members]
    if missing:
        raise DatasetError(f"{where}: sample is missing {', '.join(missing)}")
    try:
        meta = json.loads(members["json"])
    except ValueError as exc:
        raise DatasetError(f"{where}: corrupt metadata JSON ({exc})") from exc
    return Sample(
        key=key,
        identity=_unpng(members["id.png"], True, f"{where}.id.png"),
        attribute=_unpng(members["attr.png"], True, f"{where}.attr.png"),
        output=_unpng(members["out.png"], True, f"{where}.out.png"),
        mask=_unpng(members["mask.png"], False, f"{where}.mask.png").astype(np.float32) / 255.0,
        id_embedding=_unnpy(members["id_emb.npy"], f"{where}.id_emb.npy").astype(np.float32),
        attr_landmarks=_unnpy(members["attr_lmk.npy"], f"{where}.attr_lmk.npy").astype(np.float32),
        meta=meta,
        id_landmarks=(
            _unnpy(members["id_lmk.npy"], f"{where}.id_lmk.npy").astype(np.float32) if "id_lmk.npy" in members else None
        ),
    )


# -- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """A finished shard as listed in the manifest."""

    name: str
    samples: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


class ShardWriter:
    """Writes one tar shard to a temporary file; `close()` renames it into place atomically.

    Tar headers are fixed (mtime 0, uid/gid 0, mode 0644, no user names) so output is byte-for-byte
    reproducible. Use as a context manager: an exception aborts and removes the temporary file."""

    def __init__(self, path: str | Path) -> None:
        self._file = PendingFile(path, what="shard")
        self.path, self.tmp = self._file.path, self._file.tmp
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()/abort()
        self.count = 0

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        self.write_encoded(encode_sample(sample))

    def write_encoded(self, members: Iterable[tuple[str, bytes]]) -> None:
        for name, data in members:
            self.add_bytes(name, data)
        self.count += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        with open(self.tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        size = self.tmp.stat().st_size
        digest = file_sha256(self.tmp)
        self._file.commit()
        return ShardInfo(self.path.name, self.count, size, digest)

    def abort(self) -> None:
        self._tar.close()
        self._file.discard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# -- reading -------------------------------------------------------------------------------------
def iter_shard_members(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {suffix: bytes}) groups from a shard without reading it whole."""
    path = Path(path)
    key, members = None, {}
    try:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                this_key, _, suffix = base.partition(".")
                if this_key != key:
                    if key is not None:
                        yield key, members
                    key, members = this_key, {}
                handle = tar.extractfile(info)
                members[suffix] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated shard ({exc})") from exc
    if key is not None:
        yield key, members


def iter_shard(path: str | Path) -> Iterator[Sample]:
    """Stream decoded samples from one shard."""
    for key, members in iter_shard_members(path):
        yield decode_sample(key, members, where=Path(path).name)


# -- manifest ------------------------------------------------------------------------------------
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
        if data.get("identity") is not None and not isinstance(data["identity"], dict):
            raise DatasetError(f"{where}: field 'identity' must be an object")
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
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
    return DatasetManifest.from_dict(data, str(path))


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

    def shard_subset(self, rank: int = 0, world_size: int = 1) -> list[Path]:
        """Shards of part `rank` of `world_size` (round-robin), e.g. one DDP rank x DataLoader worker."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        return self.shards[rank::world_size]

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
