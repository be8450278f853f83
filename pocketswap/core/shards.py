"""The shards of a paired-face dataset (:mod:`pocketswap.core.dataset`): one sample's members and their codecs,
the deterministic tar writer and the shard reader.

A shard is a WebDataset-style tar: ``KEY.id.png KEY.attr.png KEY.out.png KEY.mask.png KEY.id_emb.npy
KEY.attr_lmk.npy KEY.json`` (and ``KEY.id_lmk.npy`` when the sample has it) per sample, written to a temporary
file and renamed when complete, with fixed tar metadata (mtime 0, uid/gid 0, member order), so the same
samples always give identical bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.core.errors import OutputError, PocketswapError
from pocketswap.core.files import PendingFile, file_sha256
from pocketswap.core.jsonio import parse_json

log = logging.getLogger(__name__)

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
    meta = parse_json(members["json"], f"{where}.json (sample metadata)", error=DatasetError)
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
        try:
            for name, data in members:
                self.add_bytes(name, data)
        except OSError as exc:  # a full disk: name the shard being written
            raise OutputError(f"cannot write shard {self.path}: {exc.strerror or exc}") from exc
        self.count += 1

    def close(self) -> ShardInfo:
        try:
            self._tar.close()
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write shard {self.path}: {exc.strerror or exc}") from exc
        size = self.tmp.stat().st_size
        digest = file_sha256(self.tmp)
        self._file.commit()
        return ShardInfo(self.path.name, self.count, size, digest)

    def abort(self) -> None:
        """Drop the shard: its temporary file is removed even when closing the tar fails again (a full disk)."""
        try:
            self._tar.close()
        except OSError:
            pass  # tarfile closes its file before this reaches us
        finally:
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
