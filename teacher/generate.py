"""Paired-data generation: face images -> aligned records -> sampled pairs -> teacher -> tar shards.

Reliability and scale:

- per-image analysis (aligned crop, landmarks in crop pixels, embedding, or the reason the image
  was skipped) is cached under ``OUT/.cache/`` so reruns do not redo it;
- pair ``i`` is a pure function of (seed, i) and shard ``s`` holds pairs ``[s*shard_size, ...)``,
  so output is identical whatever the number of workers or ranks;
- each shard is written to a temporary file and renamed when complete, then recorded in
  ``OUT/.shards/NAME.json``; a rerun skips shards whose file matches its record;
- under ``torchrun`` (``RANK``/``WORLD_SIZE``) rank ``r`` writes the shards ``s`` with
  ``s % world_size == r``; whichever rank finds every shard recorded writes ``manifest.json``;
- unreadable and face-less images are skipped, counted and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap import __version__
from pocketswap.config import check_range, from_dict, load_yaml, to_dict
from pocketswap.dataset import (
    FORMAT,
    FORMAT_VERSION,
    MEMBERS,
    Sample,
    ShardInfo,
    ShardWriter,
    encode_sample,
    file_sha256,
    iter_shard_members,
    shard_name,
    write_manifest,
)
from pocketswap.errors import ConfigError, ImageReadError, NoFaceError
from pocketswap.files import atomic_write_bytes, atomic_write_json
from pocketswap.teacher.augment import (
    AugmentConfig,
    color_jitter,
    colorize,
    expression_warp,
    flip_record,
    is_grayscale,
    make_occluder,
    morph_records,
    pose_jitter,
    skin_tone,
)
from pocketswap.teacher.base import AlignedRecord, Teacher, load_teacher

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SAMPLES = "samples"
CACHE_VERSION = 1
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
@dataclass(frozen=True)
class Source:
    """One input image: `name` is its path relative to the faces folder, or the sample name."""

    name: str
    path: Path | None = None


def list_sources(faces: str) -> list[Source]:
    """Images under a folder (recursively, by extension, sorted), or the bundled samples."""
    if faces == SAMPLES:
        from pocketswap.faces import samples

        return [Source(name) for name in samples.names()]
    root = Path(faces)
    if not root.is_dir():
        raise ConfigError(f"--faces {faces}: not a folder (give a folder of images or 'samples')")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"--faces {faces}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return [Source(p.relative_to(root).as_posix(), p) for p in files]


def yaw_proxy(landmarks: np.ndarray) -> float:
    """0 for a frontal face, about 1 for a profile: the nose tip's offset between the cheek extremes."""
    x = landmarks[:, 0]
    nose, right, left = float(x[1]), float(x[234]), float(x[454])
    return abs((nose - right) - (left - nose)) / max(abs(left - right), 1e-6)


class FaceAnalysis:
    """Detect, align and embed one image (a per-process object: models load once)."""

    def __init__(self, cfg: GenerateConfig) -> None:
        from pocketswap.faces.analyzer import FaceAnalyzer
        from pocketswap.faces.identity import load_encoder

        self.cfg = cfg
        self.analyzer = FaceAnalyzer(detector=cfg.detector, min_score=cfg.min_face_score)
        self.encoder = load_encoder(cfg.encoder)

    def __call__(self, source: Source, single: bool = False) -> dict[str, Any]:
        """Analysis of one image. ``single``: a second confident face of comparable size (>= 1/4 of the
        main face's area) is an error (ConfigError), as when the image names whose face to learn."""
        from pocketswap.faces.align import align_face
        from pocketswap.faces.analyzer import MAIN_FACE_SCORE_MARGIN
        from pocketswap.faces.identity import embed_faces
        from pocketswap.faces.samples import load
        from pocketswap.imageio import read_image

        try:
            image = read_image(source.path) if source.path is not None else load(source.name)
            faces = self.analyzer.detect(image, all_faces=single, source=source.name)
            if not faces:
                raise NoFaceError(f"no face found in {source.name}")
            face = faces[0]
        except ImageReadError as exc:
            return {"status": "skipped", "reason": f"unreadable: {exc}"}
        except NoFaceError:
            return {"status": "skipped", "reason": "no face found"}
        if single:
            similar = sum(f.area >= 0.25 * face.area and f.score >= face.score - MAIN_FACE_SCORE_MARGIN for f in faces)
            if similar > 1:
                raise ConfigError(
                    f"{source.name} shows {similar} faces of similar size; give a photo of the one person to learn"
                )
        yaw = yaw_proxy(face.landmarks)
        if yaw > self.cfg.max_yaw:
            return {"status": "skipped", "reason": f"profile face (yaw proxy {yaw:.2f} > max_yaw {self.cfg.max_yaw})"}
        aligned = align_face(image, face.keypoints, self.cfg.size, "arcface")
        matrix = aligned.matrix.astype(np.float64)
        landmarks = face.landmarks.astype(np.float64).copy()
        landmarks[:, :2] = landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        landmarks[:, 2] *= float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        with single_thread_torch():
            embedding = embed_faces(image, [face], self.encoder)[0]
        return {
            "status": "ok",
            "reason": "",
            "crop": aligned.crop,
            "landmarks": landmarks.astype(np.float32),
            "embedding": embedding.astype(np.float32),
        }


def _cache_path(cache_dir: Path, source: Source, cfg: GenerateConfig) -> Path:
    parts: list[Any] = [
        CACHE_VERSION,
        source.name,
        cfg.size,
        cfg.detector,
        cfg.min_face_score,
        cfg.max_yaw,
        cfg.encoder,
    ]
    if source.path is not None:
        stat = source.path.stat()
        parts += [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:24]
    return cache_dir / f"{key}.npz"


def _save_analysis(path: Path, result: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    np.savez(buffer, status=np.array(result["status"]), reason=np.array(result["reason"]), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_analysis(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: (data[k].item() if data[k].ndim == 0 else data[k]) for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable analysis cache entry (%s); redoing it", path, exc)
        return None


_ANALYSIS: FaceAnalysis | None = None


def _analysis_init(cfg: GenerateConfig) -> None:
    global _ANALYSIS
    _limit_threads()
    _ANALYSIS = FaceAnalysis(cfg)


def _analysis_task(source: Source) -> dict[str, Any]:
    assert _ANALYSIS is not None
    return _ANALYSIS(source)


@dataclass
class FacePool:
    """The analysed faces: records sorted by name, skipped images with reasons, embedding size."""

    records: list[AlignedRecord]
    skipped: list[dict[str, str]]
    embedding_dim: int


def analyze_faces(cfg: GenerateConfig, out: Path, workers: int = 0, progress: bool = True) -> FacePool:
    """Analyse every source image, using and filling the cache in ``OUT/.cache/analysis``."""
    from tqdm import tqdm

    sources = list_sources(cfg.faces)
    cache_dir = out / ".cache" / "analysis"
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for source in sources:
        path = _cache_path(cache_dir, source, cfg)
        cached = _load_analysis(path) if path.is_file() else None
        if cached is not None:
            results[source.name] = cached
        else:
            todo.append((source, path))
    if todo:
        log.info("analysing %d image(s) (%d cached)", len(todo), len(sources) - len(todo))
        bar = tqdm(total=len(todo), desc="analyse faces", unit="img", disable=not progress)
        if workers > 1:
            with _pool_context().Pool(min(workers, len(todo)), _analysis_init, (cfg,)) as pool:
                stream: Iterator[dict[str, Any]] = pool.imap(_analysis_task, [s for s, _ in todo])
                for (source, path), result in zip(todo, stream, strict=True):
                    _save_analysis(path, result)
                    results[source.name] = result
                    bar.update()
        else:
            analysis = FaceAnalysis(cfg)
            for source, path in todo:
                result = analysis(source)
                _save_analysis(path, result)
                results[source.name] = result
                bar.update()
        bar.close()
    records, skipped = [], []
    for source in sources:
        result = results[source.name]
        if result["status"] != "ok":
            skipped.append({"file": source.name, "reason": str(result["reason"])})
            continue
        records.append(AlignedRecord(result["crop"], result["landmarks"], result["embedding"], source.name))
    dims = {int(r.embedding.shape[0]) for r in records}
    return FacePool(records, skipped, dims.pop() if len(dims) == 1 else 0)


# -- pairs ---------------------------------------------------------------------------------------
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

    def make(self, index: int) -> tuple[Sample, dict[str, Any]]:
        cfg, aug = self.cfg, self.cfg.augment
        on = aug.enabled
        rng = np.random.default_rng([cfg.seed, 0, index])
        n = len(self.records)
        same = n < 2 or rng.random() < cfg.same_identity_share
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
            "pair": "same" if same else "cross",
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


@contextmanager
def single_thread_torch() -> Iterator[None]:
    """Run torch on one thread inside the block: a convolution's float sums depend on the thread
    count, and embeddings must not depend on how many workers generated a dataset."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _limit_threads() -> None:
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _pair_init(cfg: GenerateConfig, records: list[AlignedRecord], fixed: AlignedRecord | None) -> None:
    global _MAKER
    _limit_threads()
    _MAKER = PairMaker(cfg, records, build_teacher(cfg), fixed)


def analyze_identity(cfg: GenerateConfig) -> AlignedRecord:
    """The aligned, embedded record of ``cfg.identity`` (a photo or ``sample:NAME`` showing one person)."""
    from pocketswap.faces.samples import SAMPLE_PREFIX

    spec = cfg.identity
    source = (
        Source(spec[len(SAMPLE_PREFIX) :]) if spec.startswith(SAMPLE_PREFIX) else Source(Path(spec).name, Path(spec))
    )
    if source.path is not None and not source.path.is_file():
        raise ImageReadError(f"identity photo {spec}: no such file")
    result = FaceAnalysis(cfg)(source, single=True)
    if result["status"] != "ok":
        error = NoFaceError if "face" in str(result["reason"]) else ImageReadError
        raise error(f"identity photo {spec}: {result['reason']}")
    return AlignedRecord(result["crop"], result["landmarks"], result["embedding"], f"identity:{source.name}")


def _pair_task(indices: tuple[int, int]) -> list[tuple[list[tuple[str, bytes]], dict[str, Any]]]:
    assert _MAKER is not None
    out = []
    for index in range(*indices):
        sample, stats = _MAKER.make(index)
        out.append((encode_sample(sample), stats))
    return out


def _pool_context():
    """Spawned workers: forking a process whose OpenCV/OpenMP thread pools are running can deadlock
    (e.g. ``cv2.setNumThreads`` in the child), so workers start clean and load their own models."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


# -- shards, resume and manifest -----------------------------------------------------------------
def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment variables; (0, 1) when not set."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"invalid RANK={rank} for WORLD_SIZE={world}")
    return rank, world


def _record_path(out: Path, shard: int) -> Path:
    return out / ".shards" / f"{shard_name(shard)}.json"


def _read_record(out: Path, shard: int) -> dict[str, Any] | None:
    path = _record_path(out, shard)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _recover_record(cfg: GenerateConfig, out: Path, shard: int) -> dict[str, Any] | None:
    """Record of a shard file that exists but was not recorded (crash between rename and record):
    accepted when it holds exactly the expected complete samples."""
    path = out / shard_name(shard)
    expected = [sample_key(i) for i in cfg.shard_pairs(shard)]
    keys, counts = [], Counter()
    try:
        for key, members in iter_shard_members(path):
            if not all(s in members for s in MEMBERS):
                return None
            keys.append(key)
            meta = json.loads(members["json"])
            counts.update(
                _count_keys(
                    {
                        "pair": meta["pair"],
                        "pseudo": meta["pseudo_identity"],
                        "occluded": bool(meta["augment"].get("occluders")),
                    }
                )
            )
    except Exception:  # any decoding problem means the shard is not usable
        return None
    if keys != expected:
        return None
    info = ShardInfo(path.name, len(keys), path.stat().st_size, file_sha256(path))
    return {**info.to_dict(), "counts": dict(sorted(counts.items()))}


def _count_keys(stats: dict[str, Any]) -> list[str]:
    keys = [stats["pair"]]
    if stats["pseudo"]:
        keys.append("pseudo_identity")
    if stats["occluded"]:
        keys.append("occluded")
    return keys


def shard_complete(cfg: GenerateConfig, out: Path, shard: int) -> bool:
    """True when the shard file exists and matches its record (recovering a missing record)."""
    path = out / shard_name(shard)
    if not path.is_file():
        return False
    record = _read_record(out, shard)
    if record is None:
        record = _recover_record(cfg, out, shard)
        if record is None:
            log.warning("%s: incomplete or corrupt shard; regenerating it", path.name)
            return False
        atomic_write_json(_record_path(out, shard), record)
        return True
    expected = len(cfg.shard_pairs(shard))
    if record.get("samples") != expected or path.stat().st_size != record.get("bytes"):
        log.warning("%s: size differs from its record; regenerating it", path.name)
        return False
    if file_sha256(path) != record.get("sha256"):
        log.warning("%s: checksum differs from its record (corrupt); regenerating it", path.name)
        return False
    return True


def _check_fingerprint(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / ".generation.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if previous is not None and previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(
                f"{out} already holds a dataset generated with different settings ({', '.join(changed)} differ); "
                "use a new --out folder or delete this one"
            )
        if previous is not None:
            return
    atomic_write_json(path, fingerprint)


def build_manifest(
    cfg: GenerateConfig, pool: FacePool, teacher: Teacher, records: list[dict[str, Any]]
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(record.get("counts", {}))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pocketswap_version": __version__,
        "size": cfg.size,
        "template": "arcface",
        "seed": cfg.seed,
        "num_samples": sum(r["samples"] for r in records),
        "pairs_per_shard": cfg.shard_size,
        "counts": {"pairs": cfg.pairs, **dict(sorted(counts.items()))},
        "teacher": {"name": teacher.name, "config": teacher.config(), "config_hash": teacher.config_hash()},
        "embedding": {"encoder": cfg.encoder, "dim": pool.embedding_dim},
        "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256")} for r in records],
        "identities": [r.name for r in pool.records],
        "num_identities": len(pool.records),
        "skipped": pool.skipped,
        "num_skipped": len(pool.skipped),
        "config": cfg.fingerprint(),
    }


@dataclass
class GenerateResult:
    """What one process did: pairs written now, wall time of the pair loop, the manifest if written."""

    rank: int
    world_size: int
    shards_written: int
    shards_skipped: int
    pairs_written: int
    seconds: float
    skipped: list[dict[str, str]]
    manifest: dict[str, Any] | None
    startup_seconds: float = 0.0  # until the first chunk of pairs arrived (worker start, model loads)
    first_chunk: int = 0  # pairs in that first chunk

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_pairs_per_second(self) -> float:
        """Throughput after start-up (what a long run approaches)."""
        busy = self.seconds - self.startup_seconds
        return (self.pairs_written - self.first_chunk) / busy if busy > 0 else self.pairs_per_second


def generate(
    cfg: GenerateConfig,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Generate (or resume) this rank's shards; write the manifest once every shard exists."""
    from tqdm import tqdm

    if not cfg.out:
        raise ConfigError("config field 'out' (the dataset folder) is required")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    out = Path(cfg.out)
    teacher = build_teacher(cfg)  # a bad teacher fails before anything is written or pinned in `out`
    out.mkdir(parents=True, exist_ok=True)
    pool = analyze_faces(cfg, out, cfg.workers, progress and rank == 0)
    for item in pool.skipped:
        log.info("skipped %s: %s", item["file"], item["reason"])
    if not pool.records:
        raise NoFaceError(f"no usable face in {cfg.faces} ({len(pool.skipped)} image(s) skipped)")
    if len(pool.records) < 2 and cfg.same_identity_share < 1.0:
        log.warning("only one usable face: every pair will be a same-identity reconstruction pair")
    fixed = None
    if cfg.identity:
        fixed = analyze_identity(cfg)
        same_photo = [r.name for r in pool.records if float(r.embedding @ fixed.embedding) > 0.999]
        pool.records = [r for r in pool.records if r.name not in same_photo]
        if same_photo:
            log.info("left the identity's own photo out of the attribute pool: %s", ", ".join(same_photo))
        if not pool.records:
            raise NoFaceError(f"no attribute face in {cfg.faces} besides the identity photo")
    fingerprint = {**cfg.fingerprint(), "identities": [r.name for r in pool.records]}
    _check_fingerprint(out, fingerprint)

    mine = [s for s in range(cfg.num_shards()) if s % world_size == rank]
    for shard in mine:  # temporary files of interrupted runs
        for stale in out.glob(f".{shard_name(shard)}.tmp*"):
            stale.unlink(missing_ok=True)
    todo = [s for s in mine if not shard_complete(cfg, out, s)]
    log.info(
        "rank %d/%d: %d shard(s) to write, %d already complete (%d pairs in %d shards in total)",
        rank,
        world_size,
        len(todo),
        len(mine) - len(todo),
        cfg.pairs,
        cfg.num_shards(),
    )
    total_pairs = sum(len(cfg.shard_pairs(s)) for s in todo)
    bar = tqdm(
        total=total_pairs,
        desc="pairs" if world_size == 1 else f"pairs (rank {rank})",
        unit="pair",
        disable=not progress,
        smoothing=0.1,
    )
    start = time.perf_counter()
    written = 0
    chunks = [
        (s, (i, min(i + CHUNK, cfg.shard_pairs(s).stop)))
        for s in todo
        for i in range(cfg.shard_pairs(s).start, cfg.shard_pairs(s).stop, CHUNK)
    ]

    def results() -> Iterator[tuple[int, list]]:
        if cfg.workers > 1 and chunks:
            with _pool_context().Pool(cfg.workers, _pair_init, (cfg, pool.records, fixed)) as workers:
                yield from zip((s for s, _ in chunks), workers.imap(_pair_task, [c for _, c in chunks]), strict=True)
        else:
            global _MAKER
            _MAKER = PairMaker(cfg, pool.records, teacher, fixed)
            for shard, chunk in chunks:
                yield shard, _pair_task(chunk)

    writer: ShardWriter | None = None
    current, counts = -1, Counter()
    startup, first_chunk = 0.0, 0
    try:
        for shard, items in results():
            if not startup:
                startup, first_chunk = time.perf_counter() - start, len(items)
            if shard != current:
                current, counts = shard, Counter()
                writer = ShardWriter(out / shard_name(shard))
            assert writer is not None
            for members, stats in items:
                writer.write_encoded(members)
                counts.update(_count_keys(stats))
                written += 1
                bar.update()
            if writer.count == len(cfg.shard_pairs(shard)):
                info = writer.close()
                writer = None
                atomic_write_json(_record_path(out, shard), {**info.to_dict(), "counts": dict(sorted(counts.items()))})
    finally:
        if writer is not None:
            writer.abort()
        bar.close()
    seconds = time.perf_counter() - start

    manifest = None
    records = [_read_record(out, s) for s in range(cfg.num_shards())]
    if all(r is not None for r in records):
        manifest = build_manifest(cfg, pool, teacher, records)  # type: ignore[arg-type]
        if fixed is not None:
            source = cfg.identity if cfg.identity.startswith("sample:") else str(Path(cfg.identity).resolve())
            manifest["identity"] = {"source": source, "name": fixed.name,
                                    "embedding": [float(v) for v in fixed.embedding]}  # fmt: skip
        write_manifest(out, manifest)
        log.info("wrote %s (%d samples in %d shards)", out / "manifest.json", manifest["num_samples"], len(records))
    else:
        missing = sum(r is None for r in records)
        log.info(
            "rank %d done; %d shard(s) still being written by other ranks (the last rank writes the manifest)",
            rank,
            missing,
        )
    return GenerateResult(
        rank,
        world_size,
        len(todo),
        len(mine) - len(todo),
        written,
        seconds,
        pool.skipped,
        manifest,
        startup,
        first_chunk,
    )
