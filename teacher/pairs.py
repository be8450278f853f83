"""Pair sampling: pair ``i`` is a pure function of (seed, i); the teacher swaps it, augmented, in
this process or in spawned workers."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError
from pocketswap.core.shards import Sample, encode_sample
from pocketswap.teacher.augment import (
    color_jitter,
    colorize,
    expression_warp,
    flip_record,
    is_grayscale,
    morph_records,
    pose_jitter,
)
from pocketswap.teacher.base import AlignedRecord, Teacher, load_teacher
from pocketswap.teacher.config import GenerateConfig
from pocketswap.teacher.occluders import make_occluder, skin_tone
from pocketswap.teacher.workers import limit_threads, pool_context, single_thread_torch

log = logging.getLogger(__name__)


def sample_key(index: int) -> str:
    return f"{index:09d}"


class PairMaker:
    """Builds pair `i` from (seed, i): samples the pair, augments, runs the teacher, adds occluders."""

    def __init__(
        self, cfg: GenerateConfig, records: list[AlignedRecord], teacher: Teacher, fixed: AlignedRecord | None = None
    ) -> None:
        self.cfg = cfg
        self.records = records
        self.teacher = teacher
        self.fixed = fixed  # personalisation: the identity of every pair
        self.teacher_hash = teacher.config_hash()
        self.skin_tones = [skin_tone(r) for r in records]
        self._encoder = None
        self._pseudo: OrderedDict[int, tuple[AlignedRecord, tuple[int, int]]] = OrderedDict()

    @property
    def encoder(self):
        if self._encoder is None:
            from pocketswap.faces.identity import load_encoder

            self._encoder = load_encoder(self.cfg.encoder)
        return self._encoder

    def pseudo_identity(self, number: int) -> tuple[AlignedRecord, tuple[int, int]]:
        """Pseudo-identity `number`: a fixed function of (seed, number), cached per process."""
        if number in self._pseudo:
            self._pseudo.move_to_end(number)
            return self._pseudo[number]
        import cv2

        from pocketswap.faces.align import similarity_transform, template_points

        cfg = self.cfg.augment.pseudo_identity
        rng = np.random.default_rng([self.cfg.seed, 1, number])
        i, j = (int(v) for v in rng.choice(len(self.records), size=2, replace=False))
        alpha = float(rng.uniform(*cfg.alpha))
        morph = morph_records(self.records[i], self.records[j], alpha)
        chip_size, template = self.encoder.chip_size, self.encoder.template
        matrix = similarity_transform(morph.keypoints, template_points(chip_size, template))
        chip = cv2.warpAffine(morph.image, matrix, (chip_size, chip_size), flags=cv2.INTER_LINEAR)
        with single_thread_torch():
            embedding = self.encoder.embed_chips(chip[None])[0].astype(np.float32)
        record = AlignedRecord(morph.image, morph.landmarks, embedding, f"pseudo_{number:06d}")
        self._pseudo[number] = (record, (i, j))
        if len(self._pseudo) > 256:
            self._pseudo.popitem(last=False)
        return record, (i, j)

    def _own_identity(self, index: int, rng: np.random.Generator) -> AlignedRecord:
        """Record ``index`` as the identity of a cycle pair, colour-jittered as identities are (so that the
        identity photo's light is never the target's)."""
        record = self.records[index]
        aug = self.cfg.augment
        if aug.enabled and rng.random() < aug.color.identity_prob:
            image = color_jitter(record.image, rng, aug.color, strength=0.5)
            record = AlignedRecord(image, record.landmarks, record.embedding, record.name)
        return record

    def make(self, index: int) -> tuple[Sample, dict[str, Any]]:
        cfg, aug = self.cfg, self.cfg.augment
        on = aug.enabled
        rng = np.random.default_rng([cfg.seed, 0, index])
        n = len(self.records)
        same = n < 2 or rng.random() < cfg.same_identity_share
        # a cycle pair (ReliableSwap's idea): the attribute's own person is the identity and its real photo the
        # target; the frame the student sees is the teacher's swap of another face into that photo
        cycle = not same and self.fixed is None and rng.random() < cfg.cycle_share
        pseudo = False
        if self.fixed is not None:  # one identity: its own photo for reconstruction, else a pool face
            identity, parents = self.fixed, ()
            attribute_index = -1 if same else int(rng.integers(n))
        elif same:
            parents: tuple[int, ...] = (int(rng.integers(n)),)
            identity = self.records[parents[0]]
            attribute_index = parents[0]
        else:
            if on and aug.pseudo_identity.share > 0 and n >= 3 and rng.random() < aug.pseudo_identity.share:
                identity, parents = self.pseudo_identity(int(rng.integers(aug.pseudo_identity.count)))
                pseudo = True
            else:
                parents = (int(rng.integers(n)),)
                identity = self.records[parents[0]]
            others = np.setdiff1d(np.arange(n), parents)
            attribute_index = int(others[rng.integers(len(others))])
        attribute = self.fixed if attribute_index < 0 else self.records[attribute_index]
        attribute_name = attribute.name
        embedding = identity.embedding
        applied: dict[str, Any] = {}
        if on:
            if rng.random() < aug.flip.attribute:
                attribute, applied["flip_attribute"] = flip_record(attribute), True
            if rng.random() < aug.pose.prob:
                attribute, applied["pose"] = pose_jitter(attribute, rng, aug.pose), True
            if rng.random() < aug.expression.prob:
                attribute, applied["expression"] = expression_warp(attribute, rng, aug.expression), True
            if rng.random() < aug.color.colorize and is_grayscale(attribute.image):
                image = colorize(attribute.image, rng)
                attribute, applied["colorize"] = AlignedRecord(image, attribute.landmarks, None, attribute.name), True
            if rng.random() < aug.color.prob:
                image = color_jitter(attribute.image, rng, aug.color)
                attribute, applied["color"] = AlignedRecord(image, attribute.landmarks, None, attribute.name), True
            if not same:
                if rng.random() < aug.flip.identity:
                    identity, applied["flip_identity"] = flip_record(identity), True
                if rng.random() < aug.color.identity_prob:
                    image = color_jitter(identity.image, rng, aug.color, strength=0.5)
                    identity = AlignedRecord(image, identity.landmarks, identity.embedding, identity.name)
                    applied["color_identity"] = True
        if same:  # reconstruction: the truth is the attribute itself
            output, mask = attribute.image, self.teacher.mask(attribute)
        elif cycle:  # the donor's face in the attribute's photo is the frame; the photo itself is the truth
            swapped = self.teacher.swap(identity, attribute)
            output, mask = attribute.image, swapped.mask
            attribute = AlignedRecord(swapped.image, attribute.landmarks, None, attribute.name)
            identity, embedding = self._own_identity(attribute_index, rng), self.records[attribute_index].embedding
            parents = (attribute_index, *parents)  # both people's faces are in the pair (the split keeps them apart)
        else:
            swapped = self.teacher.swap(identity, attribute)
            output, mask = swapped.image, swapped.mask
        attribute_image = attribute.image
        if on and rng.random() < aug.occluder.prob:
            kinds = []
            for _ in range(int(rng.integers(1, aug.occluder.max_count + 1))):
                texture = self.records[int(rng.integers(n))].image
                occluder = make_occluder(rng, attribute.landmarks, cfg.size, aug.occluder, [texture], self.skin_tones)
                attribute_image, output = occluder.over(attribute_image), occluder.over(output)
                mask = mask * (1.0 - occluder.alpha)
                kinds.append(occluder.kind)
            applied["occluders"] = kinds
        meta = {
            "index": index,
            "pair": "same" if same else "cycle" if cycle else "cross",
            "pseudo_identity": pseudo,
            "identity": identity.name,
            "identity_sources": [self.records[p].name for p in parents] or [identity.name],
            "attribute": attribute_name,
            "teacher": self.teacher.name,
            "teacher_config_hash": self.teacher_hash,
            "augment": applied,
        }
        sample = Sample(
            key=sample_key(index),
            identity=identity.image,
            attribute=attribute_image,
            output=output,
            mask=mask.astype(np.float32),
            id_embedding=np.asarray(embedding, np.float32),
            attr_landmarks=attribute.landmarks.astype(np.float32),
            meta=meta,
            id_landmarks=identity.landmarks.astype(np.float32),
        )
        stats = {"pair": meta["pair"], "pseudo": pseudo, "occluded": bool(applied.get("occluders"))}
        return sample, stats


def build_teacher(cfg: GenerateConfig) -> Teacher:
    encoder = None
    if cfg.teacher != "geometric":
        from pocketswap.faces.identity import load_encoder
        from pocketswap.teacher.base import onnx_teacher_spec

        onnx_teacher_spec(cfg.teacher)  # a missing model is named before the encoder is asked for
        spec = cfg.identity_encoder or (cfg.encoder if cfg.encoder != "dlib" else None)
        if spec is None:
            raise ConfigError(
                "ONNX teachers need an ArcFace identity encoder: pass --identity-encoder ARCFACE.onnx "
                "(or --encoder ARCFACE.onnx, which also stores 512-d embeddings in the dataset)"
            )
        encoder = load_encoder(spec)
    return load_teacher(cfg.teacher, cfg.size, identity_encoder=encoder, config=cfg.teacher_config)


_MAKER: PairMaker | None = None


def _pair_init(cfg: GenerateConfig, records: list[AlignedRecord], fixed: AlignedRecord | None) -> None:
    global _MAKER
    limit_threads()
    _MAKER = PairMaker(cfg, records, build_teacher(cfg), fixed)


def _pair_task(indices: tuple[int, int]) -> list[tuple[list[tuple[str, bytes]], dict[str, Any]]]:
    assert _MAKER is not None
    out = []
    for index in range(*indices):
        sample, stats = _MAKER.make(index)
        out.append((encode_sample(sample), stats))
    return out


def make_pairs(
    cfg: GenerateConfig,
    records: list[AlignedRecord],
    teacher: Teacher,
    fixed: AlignedRecord | None,
    chunks: list[tuple[int, tuple[int, int]]],
) -> Iterator[tuple[int, list]]:
    """(shard, encoded pairs with their stats) for each (shard, pair range) chunk, in order: in
    ``cfg.workers`` spawned workers (each loads its own teacher) or in this process with ``teacher``."""
    global _MAKER
    if cfg.workers > 1 and chunks:
        with pool_context().Pool(cfg.workers, _pair_init, (cfg, records, fixed)) as workers:
            yield from zip((s for s, _ in chunks), workers.imap(_pair_task, [c for _, c in chunks]), strict=True)
    else:
        _MAKER = PairMaker(cfg, records, teacher, fixed)
        for shard, chunk in chunks:
            yield shard, _pair_task(chunk)
