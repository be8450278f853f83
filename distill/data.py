"""Streaming the paired dataset: an identity-held-out split, rank/worker partitioning, a shuffle
buffer and exactly resumable stream positions. Nothing is loaded into memory beyond one buffer.

Partitioning: each training process (DDP rank) runs ``W = max(1, num_workers)`` *parts*; part
``g`` of ``P = world_size * W`` reads, in epoch ``e``, the shards ``perm(seed, e)[g::P]`` (or, with
fewer shards than parts, every shard keeping samples ``i % P == g``). Each part's stream is an
infinite, deterministic function of ``(seed, e, g)``, so a position is just ``(epoch, offset)``
per part; batches carry it so the trainer can checkpoint exactly what it has consumed. Raw tar
members pass through the shuffle buffer; images are decoded only when a sample is used, so
skipping ahead on resume is cheap.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pocketswap.core.dataset import DatasetReader, shuffle_stream
from pocketswap.core.errors import ConfigError
from pocketswap.core.jsonio import parse_json
from pocketswap.core.shards import DatasetError, Sample, decode_sample, iter_shard_members
from pocketswap.core.spec import PIXELS
from pocketswap.faces.warp import warp_identity

if TYPE_CHECKING:
    from pocketswap.student.config import StudentConfig

log = logging.getLogger(__name__)

Members = tuple[str, dict[str, bytes], dict[str, Any]]  # key, suffix -> bytes, parsed metadata


# -- identity split ------------------------------------------------------------------------------
def name_hash(name: str, salt: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for a face name."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pair_faces(meta: dict[str, Any]) -> tuple[list[str], str | None] | None:
    """(identity source faces, attribute face) of a pair from its metadata, or None if unnamed.

    Pseudo-identities (morphs) list both parents in ``identity_sources``."""
    sources = meta.get("identity_sources") or ([meta["identity"]] if meta.get("identity") else [])
    if not sources:
        return None
    return [str(s) for s in sources], (str(meta["attribute"]) if meta.get("attribute") else None)


@dataclass(frozen=True)
class Split:
    """Held-out faces. A pair is *val* when all its identity sources are held out (and, if
    ``strict``, its attribute face too); *train* when it touches no held-out face at all (neither
    as identity nor as attribute); other pairs are used by neither, so no val identity is ever seen
    in training. Unnamed pairs fall back to a per-key hash."""

    val_names: frozenset[str]
    fraction: float
    salt: int = 0
    strict: bool = False
    by: str = "identity"  # "attribute": held-out attribute faces (one-identity personalisation datasets)

    def role(self, key: str, meta: dict[str, Any]) -> str | None:
        faces = pair_faces(meta)
        if faces is None:
            return "val" if name_hash(key, self.salt) < self.fraction else "train"
        sources, attribute = faces
        if self.by == "attribute":
            return "val" if attribute in self.val_names else "train"
        held = [s in self.val_names for s in sources]
        attribute_held = attribute in self.val_names if attribute else False
        if all(held) and (attribute_held or not self.strict):
            return "val"
        if not any(held) and not attribute_held:
            return "train"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "val_names": sorted(self.val_names),
            "fraction": self.fraction,
            "salt": self.salt,
            "strict": self.strict,
            "by": self.by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        return cls(
            frozenset(data["val_names"]), float(data["fraction"]), int(data["salt"]), bool(data["strict"]),
            str(data.get("by", "identity")),
        )  # fmt: skip


def person_of(name: str) -> str:
    """Whose face a dataset face name is: its top folder for per-person layouts (``alice/001.jpg`` ->
    ``alice``, as in VGGFace2 or CelebA folders), else the file itself (one photo, one person)."""
    return name.split("/", 1)[0] if "/" in name else name


def make_split(
    identities: Sequence[str],
    fraction: float,
    salt: int = 0,
    strict: bool = False,
    by: str = "identity",
    always: tuple[str, ...] = (),
) -> Split:
    """Hold out ``round(fraction * N)`` of the N people among the face names ``identities`` (at least 1,
    at most N - 1), chosen by a salted hash of their names, with every photo of each (people are
    :func:`person_of` the face names): as identities (``by="identity"``) or as attribute faces (``by="attribute"``, for
    personalisation datasets whose pairs all share one identity). Faces or people named in ``always``
    (e.g. the photo a demo will swap into) are held out whatever the hash says."""
    names = sorted({str(n) for n in identities})
    people: dict[str, list[str]] = {}
    for name in names:
        people.setdefault(person_of(name), []).append(name)
    always_people = []
    for wanted in always:
        if wanted not in names and wanted not in people:
            raise DatasetError(f"config field 'holdout': {wanted!r} is not a face of this dataset")
        always_people.append(person_of(wanted))
    always_people = list(dict.fromkeys(always_people))
    if (fraction <= 0 and not always) or len(people) < 2:
        if fraction > 0:
            log.warning("the dataset lists %d people: no held-out validation split", len(people))
        return Split(frozenset(), 0.0 if names else fraction, salt, strict, by)
    count = min(len(people) - 1, max(1, round(fraction * len(people))))
    ranked = [*always_people, *sorted(set(people) - set(always_people), key=lambda n: name_hash(n, salt))]
    held = ranked[: max(count, len(always_people))]
    return Split(frozenset(face for person in held for face in people[person]), fraction, salt, strict, by)


# -- raw member streams --------------------------------------------------------------------------
def iter_members(shards: list[Path], split: Split | None, which: str) -> Iterator[Members]:
    """(key, members, meta) of the complete samples of ``shards`` in order, filtered to ``which``
    ("train", "val" or "all") of ``split``."""
    for path in shards:
        for key, members in iter_shard_members(path):
            meta = parse_json(
                members.get("json", b"{}"), f"{path.name}:{key}.json (sample metadata)", error=DatasetError
            )
            if which != "all" and split is not None and split.role(key, meta) != which:
                continue
            yield key, members, meta


def part_epoch(
    shards: list[Path], split: Split | None, which: str, seed: int, epoch: int, part: int, parts: int, buffer: int
) -> Iterator[Members]:
    """One epoch of part ``part`` of ``parts``: deterministic in (seed, epoch, part)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    if len(shards) >= parts:
        stream = iter_members([shards[i] for i in order[part::parts]], split, which)
    else:
        stream = (m for i, m in enumerate(iter_members([shards[i] for i in order], split, which)) if i % parts == part)
    yield from shuffle_stream(stream, buffer, np.random.default_rng([seed, epoch, part, 7]))


def decode(item: Members) -> Sample:
    key, members, _ = item
    return decode_sample(key, members)


# -- batches -------------------------------------------------------------------------------------
def collate(samples: list[Sample], warp_shape: float | None = None) -> dict[str, Any]:
    """Stack samples into CPU tensors: images uint8 [B,S,S,3], mask float [B,S,S], embedding [B,D],
    landmarks [B,468,3], ``same`` bool [B]; ``keys`` and ``identity`` (names) as lists. ``warp_shape``
    (a student's ``StudentConfig.warp_shape``; None: none): also ``identity_warped`` uint8 [B,S,S,3], each
    identity crop warped onto its attribute's landmarks moved that far to the identity's face shape."""
    batch = {
        "identity_image": torch.from_numpy(np.stack([s.identity for s in samples])),
        "attribute": torch.from_numpy(np.stack([s.attribute for s in samples])),
        "output": torch.from_numpy(np.stack([s.output for s in samples])),
        "mask": torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.float32)),
        "embedding": torch.from_numpy(np.stack([s.id_embedding for s in samples]).astype(np.float32)),
        "landmarks": torch.from_numpy(np.stack([s.attr_landmarks for s in samples]).astype(np.float32)),
        "same": torch.tensor([s.meta.get("pair") == "same" for s in samples], dtype=torch.bool),
        "keys": [s.key for s in samples],
        "identity": [str(s.meta.get("identity", s.key)) for s in samples],
    }
    if warp_shape is not None:
        missing = next((s.key for s in samples if s.id_landmarks is None), None)
        if missing is not None:
            raise DatasetError(
                f"sample {missing} has no identity landmarks (id_lmk.npy): students with 'identity_warp' need a "
                "dataset written by this version (`pocketswap teacher generate` again)"
            )
        warped = [warp_identity(s.identity, s.id_landmarks, s.attr_landmarks, shape=warp_shape) for s in samples]
        batch["identity_warped"] = torch.from_numpy(np.stack(warped))
    return batch


def identity_input(batch: dict[str, Any]) -> torch.Tensor:
    """The identity image a student reads, as float [B,3,S,S] in [-1, 1]: the warped identity when the
    batch carries it (``collate(..., warp_shape)``), else the aligned identity crop."""
    return PIXELS.to_model_torch(batch["identity_warped"] if "identity_warped" in batch else batch["identity_image"])


class TrainStream(IterableDataset):
    """Infinite stream of training batches for one process (rank), split over DataLoader workers.

    ``positions`` maps a local part (0..W-1) to its (epoch, offset); ``rotation`` is the number of
    batches consumed so far, so that a fresh DataLoader (which starts at worker 0) continues the
    round-robin order exactly where the previous one stopped. Each batch carries ``_part``,
    ``_epoch`` and ``_offset`` (its part's position after the batch)."""

    def __init__(
        self,
        root: str | Path,
        split: Split | None,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = 256,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        positions: dict[int, tuple[int, int]] | None = None,
        rotation: int = 0,
        warp_shape: float | None = None,
    ) -> None:
        super().__init__()
        self.shards = list(DatasetReader(root).shards)
        self.split, self.batch_size, self.seed, self.buffer = split, batch_size, seed, shuffle_buffer
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.positions = dict(positions or {})
        self.rotation = rotation
        self.warp_shape = warp_shape

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        local = (worker + self.rotation) % self.workers
        part, parts = self.rank * self.workers + local, self.world_size * self.workers
        epoch, offset = self.positions.get(local, (0, 0))
        batch: list[Sample] = []
        while True:
            seen = 0
            for seen, item in enumerate(
                part_epoch(self.shards, self.split, "train", self.seed, epoch, part, parts, self.buffer), 1
            ):
                if seen <= offset:
                    continue
                batch.append(decode(item))
                if len(batch) == self.batch_size:
                    yield {**collate(batch, self.warp_shape), "_part": local, "_epoch": epoch, "_offset": seen}
                    batch = []
            if seen == 0:
                raise DatasetError(
                    f"training part {part} of {parts} got no samples (dataset too small or every identity held out)"
                )
            epoch, offset = epoch + 1, 0


def iter_split(root: str | Path, split: Split | None, which: str, limit: int | None = None) -> Iterator[Sample]:
    """Decoded samples of one split in dataset order (no shuffling): validation and evaluation."""
    reader = DatasetReader(root)
    for count, item in enumerate(iter_members(reader.shards, split, which)):
        if limit is not None and count >= limit:
            return
        yield decode(item)


def iter_batches(
    samples: Iterator[Sample], batch_size: int, warp_shape: float | None = None
) -> Iterator[dict[str, Any]]:
    """Collated batches of ``samples`` (the last one may be short); ``warp_shape`` as in :func:`collate`."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate(batch, warp_shape)
            batch = []
    if batch:
        yield collate(batch, warp_shape)


def dataset_fingerprint(reader: DatasetReader) -> str:
    """Short hash of the shard hashes: identifies a dataset's content."""
    text = ",".join(s.sha256 for s in reader.manifest.shards)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker's global numpy/random RNGs from its torch seed."""
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)  # noqa: NPY002
    random.seed(worker_seed)


def stream_loader(stream: Any, num_workers: int, seed: int) -> Iterator[dict[str, Any]]:
    """Batches of a :class:`TrainStream` through a DataLoader (``num_workers`` processes, seeded)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=2 if num_workers else None,
    )
    return iter(loader)


def check_dataset(reader: DatasetReader, student: StudentConfig, preset: str) -> None:
    """ConfigError when the dataset's crops, embeddings or template do not fit ``student`` (of ``preset``);
    a warning when its teacher moved the features to another face shape than the student's warped identity."""
    size, dim = reader.size, reader.embedding_dim
    if student.size != size:
        raise ConfigError(
            f"the dataset's crops are {size} px but the student's field 'size' is {student.size} "
            f"(preset {preset!r}): generate the dataset with --size {student.size} or set student.size={size}"
        )
    if student.embed_dim != dim:
        raise ConfigError(
            f"config field 'student.embed_dim' is {student.embed_dim} but the dataset's embeddings have {dim}"
        )
    template = reader.manifest.template
    if template != student.template:
        raise ConfigError(
            f"the dataset's crops use the {template!r} template, the student field 'template' is {student.template!r}"
        )
    teacher_shape = reader.manifest.teacher.get("shape_transfer")
    if student.warp_shape is not None and teacher_shape is not None and teacher_shape != student.warp_shape:
        log.warning(
            "the teacher moved the features %.2f of the way to the identity's shape, the student's warped identity "
            "%.2f (student.identity_shape): its input and its targets disagree; set student.identity_shape=%s",
            teacher_shape, student.warp_shape, teacher_shape,
        )  # fmt: skip


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch as float tensors in [-1, 1] (images) on ``device``, as the loss reads them."""
    return {
        "attribute": PIXELS.to_model_torch(batch["attribute"]).to(device),
        "output": PIXELS.to_model_torch(batch["output"]).to(device),
        "identity_image": PIXELS.to_model_torch(batch["identity_image"]).to(device),
        "identity_input": identity_input(batch).to(device),
        "mask": batch["mask"].unsqueeze(1).to(device),
        "embedding": batch["embedding"].to(device),
        "same": batch["same"].to(device),
    }


__all__ = [
    "Split",
    "TrainStream",
    "check_dataset",
    "collate",
    "dataset_fingerprint",
    "identity_input",
    "iter_batches",
    "iter_split",
    "make_split",
    "name_hash",
    "pair_faces",
]
