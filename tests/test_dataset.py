"""Dataset format (writer, streaming reader, manifest) and the paired-data generator: tiny datasets
from real sample faces, determinism, resume after interruption, skipped files, 2-rank generation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pocketswap.core.dataset import MANIFEST, DatasetManifest, DatasetReader, read_dataset_manifest
from pocketswap.core.errors import ConfigError, PocketswapError
from pocketswap.core.files import temp_path
from pocketswap.core.shards import DatasetError, Sample, ShardWriter, decode_sample, encode_sample, iter_shard
from pocketswap.teacher.generate import GenerateConfig, generate

FACES = ("astronaut", "grace_hopper", "lfw_00", "lfw_01", "lfw_02", "lfw_05")
PAIRS, SHARD_SIZE, SEED = 10, 3, 7  # 4 shards: 3 + 3 + 3 + 1


def _sample(key: str, seed: int, size: int = 32) -> Sample:
    rng = np.random.default_rng(seed)
    return Sample(
        key=key,
        identity=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        attribute=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        output=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        mask=rng.uniform(0, 1, (size, size)).astype(np.float32),
        id_embedding=rng.normal(size=128).astype(np.float32),
        attr_landmarks=rng.uniform(0, size, (468, 3)).astype(np.float32),
        meta={"pair": "cross", "index": seed},
    )


# -- format --------------------------------------------------------------------------------------
def test_shard_roundtrip_is_deterministic_and_atomic(tmp_path):
    samples = [_sample(f"{i:09d}", i) for i in range(3)]
    infos = []
    for name in ("a.tar", "b.tar"):
        with ShardWriter(tmp_path / name) as writer:
            for s in samples:
                writer.write(s)
            infos.append(writer.close())
    assert infos[0].sha256 == infos[1].sha256 and infos[0].samples == 3
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    decoded = list(iter_shard(tmp_path / "a.tar"))
    assert [d.key for d in decoded] == [s.key for s in samples]
    for d, s in zip(decoded, samples, strict=True):
        assert np.array_equal(d.identity, s.identity) and np.array_equal(d.output, s.output)
        assert np.abs(d.mask - s.mask).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(d.id_embedding, s.id_embedding) and np.array_equal(d.attr_landmarks, s.attr_landmarks)
        assert d.meta == s.meta
    # An exception inside the writer leaves neither the shard nor its temporary file.
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "c.tar") as writer:
        writer.write(samples[0])
        raise RuntimeError("interrupted")
    assert not list(tmp_path.glob("*c.tar*"))
    # Truncated shards and incomplete samples raise DatasetError.
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError):
        list(iter_shard(tmp_path / "t.tar"))
    members = dict((n.split(".", 1)[1], b) for n, b in encode_sample(samples[0]))
    members.pop("out.png")
    with pytest.raises(DatasetError, match="out.png"):
        decode_sample("x", members)


def test_manifest_validation_names_the_field():
    good = {
        "format": "pocketswap-paired-faces",
        "format_version": 1,
        "size": 224,
        "num_samples": 2,
        "shards": [{"name": "shard-000000.tar", "samples": 2, "bytes": 10, "sha256": "x"}],
        "teacher": {},
        "embedding": {"dim": 128},
        "seed": 0,
        "counts": {},
        "identities": [],
        "skipped": [],
    }
    parsed = DatasetManifest.from_dict(good)
    assert parsed.shards[0].samples == 2 and parsed.embedding_dim == 128 and parsed.identity is None
    assert DatasetManifest.from_dict({**good, "note": "kept"}).to_dict() == {
        **good,
        "template": "arcface",
        "note": "kept",
    }
    for field, value, pattern in [
        ("num_samples", 3, "num_samples"),
        ("format", "other", "format"),
        ("format_version", 99, "format_version"),
        ("shards", "x", "shards"),
        ("embedding", {}, "embedding.dim"),
    ]:
        with pytest.raises(DatasetError, match=pattern):
            DatasetManifest.from_dict({**good, field: value})
    broken = dict(good)
    del broken["seed"]
    with pytest.raises(DatasetError, match="'seed'"):
        DatasetManifest.from_dict(broken)


# -- generation ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory) -> Path:
    """Real sample faces as files (one in a subfolder), plus a corrupt file and a face-less image."""
    from pocketswap.core.imageio import write_image
    from pocketswap.faces import samples

    root = tmp_path_factory.mktemp("faces")
    for i, name in enumerate(FACES):
        write_image(root / ("people" if i % 2 else "") / f"{name}.{'jpg' if i == 1 else 'png'}", samples.load(name))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    ramp = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3))
    write_image(root / "landscape.png", ramp)
    (root / "notes.txt").write_text("not an image")
    return root


def _config(faces_dir: Path, out: Path, **changes) -> GenerateConfig:
    base = {"faces": str(faces_dir), "out": str(out), "pairs": PAIRS, "shard_size": SHARD_SIZE, "seed": SEED}
    return GenerateConfig.from_dict({**base, **changes})


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def _with_cache(reference: Path, out: Path) -> Path:
    """A fresh output folder that reuses the reference run's face-analysis cache."""
    out.mkdir(parents=True)
    shutil.copytree(reference / ".cache", out / ".cache")
    return out


@pytest.fixture(scope="module")
def reference(faces_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "data"
    result = generate(_config(faces_dir, out), progress=False)
    assert result.manifest is not None and result.pairs_written == PAIRS
    return out


def test_generated_dataset_is_valid(reference):
    reader = DatasetReader(reference)
    assert len(reader) == PAIRS and reader.size == 224 and reader.embedding_dim == 128
    assert reader.verify(deep=True) == {"shards": 4, "samples": PAIRS, "deep": True}
    manifest = read_dataset_manifest(reference)
    assert [s.samples for s in manifest.shards] == [3, 3, 3, 1]
    assert manifest.teacher["name"] == "geometric" and len(manifest.teacher["config_hash"]) == 16
    assert manifest.seed == SEED and manifest.embedding == {"encoder": "dlib", "dim": 128}
    assert manifest.counts["cross"] + manifest.counts.get("same", 0) == PAIRS
    assert sorted(manifest.identities) == sorted(
        [
            "astronaut.png",
            "people/grace_hopper.jpg",
            "lfw_00.png",
            "people/lfw_01.png",
            "lfw_02.png",
            "people/lfw_05.png",
        ]
    )
    skipped = {item["file"]: item["reason"] for item in manifest.skipped}
    assert set(skipped) == {"corrupt.jpg", "landscape.png"}
    assert "unreadable" in skipped["corrupt.jpg"] and "no face" in skipped["landscape.png"]
    keys = []
    for sample in reader:
        keys.append(sample.key)
        assert sample.identity.shape == sample.attribute.shape == sample.output.shape == (224, 224, 3)
        assert sample.mask.shape == (224, 224) and sample.mask.min() >= 0.0 and sample.mask.max() <= 1.0
        assert abs(float(np.linalg.norm(sample.id_embedding)) - 1.0) < 1e-4
        assert sample.attr_landmarks.shape == sample.id_landmarks.shape == (468, 3)
        meta = sample.meta
        assert meta["teacher"] == "geometric" and meta["teacher_config_hash"] == manifest.teacher["config_hash"]
        assert meta["pair"] in ("cross", "same") and meta["attribute"] in manifest.identities
        if meta["pair"] == "cross":
            assert meta["attribute"] not in meta["identity_sources"]
            face = sample.mask > 0.9
            assert np.abs(sample.output[face].astype(int) - sample.attribute[face].astype(int)).mean() > 3
        else:
            assert np.array_equal(sample.output, sample.attribute)
    assert keys == [f"{i:09d}" for i in range(PAIRS)]
    # Warped-identity students read each identity crop warped onto its attribute's landmarks.
    from pocketswap.distill.data import collate

    samples = [s for _, s in zip(range(4), reader, strict=False)]
    batch = collate(samples, warp_shape=0.0)
    assert batch["identity_warped"].shape == batch["identity_image"].shape
    assert not torch.equal(batch["identity_warped"], batch["identity_image"])
    assert "identity_warped" not in collate(samples)  # students without the warped identity
    shaped = collate(samples, warp_shape=0.5)["identity_warped"]  # moved half-way to the identity's face shape
    assert not torch.equal(shaped, batch["identity_warped"])
    samples[1].id_landmarks = None  # a dataset written before identity landmarks were recorded
    with pytest.raises(DatasetError, match="no identity landmarks.*teacher generate"):
        collate(samples, warp_shape=0.0)
    # Streaming with shuffling and rank splits covers every sample exactly once.
    parts = [
        [s.key for s in reader.iter_samples(shuffle=True, seed=1, rank=r, world_size=2, shuffle_buffer=2)]
        for r in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == keys and not set(parts[0]) & set(parts[1])


def test_same_seed_same_bytes_with_any_worker_count(faces_dir, reference, tmp_path):
    out = _with_cache(reference, tmp_path / "again")
    generate(_config(faces_dir, out, workers=2), progress=False)
    assert _shards(out) == _shards(reference)
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference / MANIFEST).read_text())
    other = _with_cache(reference, tmp_path / "other")
    generate(_config(faces_dir, other, seed=SEED + 1), progress=False)
    assert _shards(other) != _shards(reference)


def test_resume_after_interruption(faces_dir, reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    (out / MANIFEST).unlink()
    (out / "shard-000003.tar").unlink()  # the shard in progress when the run died
    data = bytearray((out / "shard-000001.tar").read_bytes())
    data[5000] ^= 0xFF  # silent corruption: caught by the checksum record
    (out / "shard-000001.tar").write_bytes(bytes(data))
    (out / ".shards" / "shard-000000.tar.json").unlink()  # died between rename and record: recovered
    temp_path(out / "shard-000002.tar").write_bytes(b"partial")  # a writer killed mid-shard
    result = generate(_config(faces_dir, out), progress=False)
    assert result.shards_written == 2 and result.shards_skipped == 2  # shards 1 and 3 redone
    assert _shards(out) == _shards(reference)
    assert not list(out.glob(".*.tmp*"))
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference / MANIFEST).read_text())
    again = generate(_config(faces_dir, out), progress=False)  # a complete dataset: nothing to do
    assert again.shards_written == 0 and again.manifest is not None
    with pytest.raises(ConfigError, match="seed"):
        generate(_config(faces_dir, out, seed=SEED + 5), progress=False)


def test_two_ranks_write_disjoint_shards(faces_dir, reference, tmp_path):
    out = _with_cache(reference, tmp_path / "ranks")
    first = generate(_config(faces_dir, out), rank=0, world_size=2, progress=False)
    assert sorted(_shards(out)) == ["shard-000000.tar", "shard-000002.tar"]
    assert first.manifest is None and not (out / MANIFEST).exists()
    second = generate(_config(faces_dir, out), rank=1, world_size=2, progress=False)
    assert second.shards_written == 2 and second.manifest is not None
    assert _shards(out) == _shards(reference)


@pytest.mark.slow
def test_two_rank_processes_like_torchrun(faces_dir, reference, tmp_path):
    out = _with_cache(reference, tmp_path / "torchrun")
    command = [
        sys.executable,
        "-m",
        "pocketswap.cli",
        "teacher",
        "generate",
        "--faces",
        str(faces_dir),
        "--out",
        str(out),
        "--pairs",
        str(PAIRS),
        "--shard-size",
        str(SHARD_SIZE),
        "--seed",
        str(SEED),
        "--no-progress",
    ]
    procs = [
        subprocess.Popen(
            command,
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert "rank 0/2: wrote 6 pairs in 2 shard(s)" in logs[0]
    assert "rank 1/2: wrote 4 pairs in 2 shard(s)" in logs[1]
    assert _shards(out) == _shards(reference)
    assert read_dataset_manifest(out).shards == read_dataset_manifest(reference).shards


@pytest.mark.slow
def test_cli_generate_from_samples_and_preview(tmp_path):
    from pocketswap.cli import main

    out = tmp_path / "samples_ds"
    config = tmp_path / "gen.yaml"
    config.write_text("pairs: 6\nshard_size: 4\nseed: 3\naugment:\n  occluder:\n    prob: 1.0\n")
    assert (
        main(["teacher", "generate", "--faces", "samples", "--out", str(out), "--config", str(config), "--no-progress"])
        == 0
    )
    manifest = read_dataset_manifest(out)
    assert manifest.num_samples == 6 and manifest.counts["occluded"] == 6
    assert manifest.extra["config"]["augment"]["occluder"]["prob"] == 1.0
    skipped = {item["file"] for item in manifest.skipped}
    assert "camera" in skipped and "astronaut" in manifest.identities and "grace_hopper" in manifest.identities
    assert manifest.extra["num_identities"] + manifest.extra["num_skipped"] == 103
    grid = tmp_path / "grid.png"
    assert main(["teacher", "preview", str(out), "--out", str(grid), "--rows", "3"]) == 0
    assert cv2.imread(str(grid)).shape == (3 * 224, 4 * 224, 3)


def test_generate_config_validation(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("pairs: 5\naugment:\n  expression:\n    prob: 3\n")
    with pytest.raises(ConfigError, match="'augment.expression.prob'"):
        GenerateConfig.load(config)
    config.write_text("pairs: 5\nsame_identity_shar: 0.2\n")
    with pytest.raises(ConfigError, match="'same_identity_shar'"):
        GenerateConfig.load(config)
    with pytest.raises(ConfigError, match="'pairs'"):
        GenerateConfig.load(None, {"pairs": "many"})
    cfg = GenerateConfig.load(None, {"pairs": 4, "teacher_config": {"blend": "laplacian"}})
    assert cfg.pairs == 4 and cfg.teacher_config == {"blend": "laplacian"} and cfg.num_shards() == 1
    with pytest.raises(ConfigError, match="no images"):
        generate(GenerateConfig(faces=str(tmp_path), out=str(tmp_path / "o")), progress=False)


def test_a_failed_start_does_not_block_the_corrected_retry(faces_dir, reference, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(PocketswapError, match="bogus.onnx"):
        generate(_config(faces_dir, out, teacher=str(tmp_path / "bogus.onnx")), progress=False)
    assert not (out / ".generation.json").exists()  # nothing pinned by the failed attempt
    result = generate(_config(faces_dir, _with_cache(reference, out)), progress=False)
    assert result.manifest is not None and _shards(out) == _shards(reference)


def test_a_truncated_shard_is_named_before_any_sample_is_read(reference, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    shard = out / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut mid-way: half its samples gone
    with pytest.raises(DatasetError, match=r"shard-000001\.tar .*teacher generate"):
        DatasetReader(out)
