"""Identity encoders: the PyTorch port of dlib's face-recognition ResNet and the ArcFace ONNX adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pocketswap.core.errors import CheckpointError, ConfigError, ModelSignatureError, PocketswapError
from pocketswap.core.identity import Identity
from pocketswap.faces import samples
from pocketswap.faces.arcface_onnx import ArcFaceOnnxEncoder
from pocketswap.faces.dlib_resnet import (
    DLIB_CHIP_TEMPLATE_150,
    SAME_PERSON_THRESHOLD,
    DlibEncoder,
    default_model_path,
    load_dlib_resnet,
)
from pocketswap.faces.identity import read_identity

logger = logging.getLogger(__name__)

# Sample faces dlib's frontal detector finds (upsampling once).
PARITY_FACES = ("astronaut", "grace_hopper", "lfw_00", "lfw_01", "lfw_02", "lfw_03", "lfw_05")


@pytest.fixture(scope="module")
def encoder() -> DlibEncoder:
    return DlibEncoder()


@pytest.fixture(scope="module")
def dlib_faces() -> dict[str, tuple[np.ndarray, object, np.ndarray]]:
    """name -> (image, dlib detection rectangle, dlib's own 150 px chip)."""
    dlib = pytest.importorskip("dlib")
    models = default_model_path().parent
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    faces = {}
    for name in PARITY_FACES:
        image = samples.load(name)
        detections = detector(image, 1)
        assert detections, f"dlib found no face in {name}"
        chip = dlib.get_face_chip(image, predictor(image, detections[0]), size=150, padding=0.25)
        faces[name] = (image, detections[0], chip)
    return faces


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------ dlib port


def test_parity_with_dlib(encoder: DlibEncoder, dlib_faces: dict) -> None:
    dlib = pytest.importorskip("dlib")
    reference = dlib.face_recognition_model_v1(str(default_model_path()))
    chips = np.stack([chip for _, _, chip in dlib_faces.values()])
    ours = encoder.raw_descriptors(chips)
    for name, (_, _, chip), descriptor in zip(dlib_faces, dlib_faces.values(), ours, strict=True):
        expected = np.array(reference.compute_face_descriptor(chip))
        cosine = _cos(descriptor, expected)
        logger.info("%s: cosine %.9f, max abs diff %.2e", name, cosine, np.abs(descriptor - expected).max())
        assert cosine >= 0.9999, name
        assert np.abs(descriptor - expected).max() < 1e-4, name


def test_embeddings_are_unit_norm_float32(encoder: DlibEncoder) -> None:
    chip = cv2.resize(samples.load("astronaut")[40:300, 120:380], (150, 150), interpolation=cv2.INTER_AREA)
    single, batch = encoder.embed_chips(chip), encoder.embed_chips(np.stack([chip, chip]))
    assert single.shape == (1, 128) and batch.shape == (2, 128)
    assert single.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(single[0], batch[1], atol=1e-5)
    assert encoder.embed_chips(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="150"):
        encoder.embed_chips(np.zeros((112, 112, 3), np.uint8))


def test_same_and_different_person(encoder: DlibEncoder, dlib_faces: dict) -> None:
    astronaut, hopper = dlib_faces["astronaut"][2], dlib_faces["grace_hopper"][2]
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    rescaled = cv2.resize(cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA), (150, 150))
    emb = encoder.embed_chips(np.stack([astronaut, flipped, rescaled, hopper]))
    distances = encoder.cosine_distance(emb[0], emb[1:])
    logger.info("cosine distances: flipped %.4f, rescaled %.4f, other person %.4f", *distances)
    assert encoder.is_same_person(emb[0], emb[1]) and encoder.is_same_person(emb[0], emb[2])
    assert not encoder.is_same_person(emb[0], emb[3])
    assert distances[:2].max() < SAME_PERSON_THRESHOLD / 2  # augmentations stay far inside the threshold
    # dlib's own rule on raw descriptors gives the same decisions.
    raw = encoder.raw_descriptors(np.stack([astronaut, flipped, rescaled, hopper]))
    euclid = np.linalg.norm(raw[1:] - raw[0], axis=1)
    assert (euclid < 0.6).tolist() == [True, True, False]


def test_gradients_reach_the_input(encoder: DlibEncoder) -> None:
    image = cv2.resize(samples.load("astronaut")[40:300, 120:380], (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    x.requires_grad_(True)
    target = encoder.embed_chip_tensor(torch.flip(x.detach(), dims=[3]))
    emb = encoder.embed_chip_tensor(x)
    assert emb.shape == (1, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1))
    loss = 1.0 - (emb * target).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.model.parameters())


def test_tensor_path_matches_numpy_path(encoder: DlibEncoder) -> None:
    chip = cv2.resize(samples.load("grace_hopper")[60:360, 100:400], (150, 150), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(chip).permute(2, 0, 1).float() / 127.5 - 1.0
    with torch.no_grad():
        from_tensor = encoder.embed_chip_tensor(x).numpy()
    np.testing.assert_allclose(from_tensor, encoder.embed_chips(chip), atol=1e-5)


def test_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_dlib_resnet(tmp_path / "missing.dat")
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(default_model_path().read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dlib_resnet(truncated)
    # A real dlib network, but not this one (the CNN face detector).
    with pytest.raises(CheckpointError, match="loss_metric_2"):
        load_dlib_resnet(default_model_path().parent / "mmod_human_face_detector.dat")
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError):
        load_dlib_resnet(garbage)


def test_model_structure() -> None:
    model = load_dlib_resnet()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 5_607_488  # 29 convs (affines folded) + fc 256x128
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 29
    with pytest.raises(ValueError, match="150"):
        model(torch.zeros(1, 3, 112, 112))


def test_chip_template_matches_dlib_chips(encoder: DlibEncoder, dlib_faces: dict) -> None:
    """Aligning 68-point keypoints onto DLIB_CHIP_TEMPLATE_150 reproduces dlib's chips' identity."""
    dlib = pytest.importorskip("dlib")
    from pocketswap.faces.align import align_face

    template = np.asarray(DLIB_CHIP_TEMPLATE_150)
    assert template.shape == (5, 2)
    assert template[0, 0] < template[1, 0] and template[3, 0] < template[4, 0]
    assert template[0, 1] < template[2, 1] < template[3, 1]
    predictor = dlib.shape_predictor(str(default_model_path().parent / "shape_predictor_68_face_landmarks.dat"))
    for name, (image, rect, chip) in dlib_faces.items():
        points = np.array([[p.x, p.y] for p in predictor(image, rect).parts()], np.float32)
        keypoints = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
        ours = align_face(image, keypoints, 150, "dlib").crop
        emb = encoder.embed_chips(np.stack([chip, ours]))
        distance = float(encoder.cosine_distance(emb[0], emb[1]))
        logger.info("%s: template-aligned vs dlib chip cosine distance %.4f", name, distance)
        assert distance < 0.03, name


# ------------------------------------------------------------------------------------------ ArcFace ONNX


def _arcface_model(
    path: Path, input_shape: tuple = ("N", 3, 112, 112), output_shape: tuple = ("N", 512), out_dim: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conv1x1(C->8) + GlobalAveragePool + Flatten + MatMul(8->out_dim), C = input_shape[1]; returns its weights.

    Without a spatial axis pair (rank 3) the Conv is left out so the graph stays valid."""
    rng = np.random.default_rng(0)
    channels, conv = input_shape[1], len(input_shape) == 4
    conv_w = rng.normal(size=(8, channels, 1, 1)).astype(np.float32)
    conv_b = rng.normal(size=8).astype(np.float32)
    fc = rng.normal(size=(8 if conv else channels, out_dim)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["c" if conv else "input"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["embedding"]),
    ]
    weights = [numpy_helper.from_array(fc, "fc")]
    if conv:
        nodes.insert(0, helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"]))
        weights += [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b")]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, list(output_shape))],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return conv_w, conv_b, fc


def _chips(count: int) -> np.ndarray:
    image = samples.load("astronaut")
    return np.stack([cv2.resize(image[30 * i : 30 * i + 300, 100:400], (112, 112)) for i in range(count)])


@pytest.mark.parametrize("batch", ["N", 1])
def test_arcface_adapter_embeds(tmp_path: Path, batch: str | int) -> None:
    path = tmp_path / "arcface.onnx"
    conv_w, conv_b, fc = _arcface_model(path, input_shape=(batch, 3, 112, 112), output_shape=(batch, 512))
    encoder = ArcFaceOnnxEncoder(path)
    chips = _chips(3)
    emb = encoder.embed_chips(chips)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The documented convention: RGB, (x - 127.5) / 127.5, NCHW.
    x = (chips.astype(np.float64) - 127.5) / 127.5
    expected = (x.mean(axis=(1, 2)) @ conv_w[:, :, 0, 0].T + conv_b) @ fc
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, expected, atol=1e-4)
    assert encoder.embed_chips(chips[0]).shape == (1, 512)


@pytest.mark.parametrize(
    ("kwargs", "found"),
    [
        ({"input_shape": ("N", 3, 128, 128)}, "128, 128"),
        ({"input_shape": ("N", 112, 112, 3)}, "112, 112, 3"),
        ({"input_shape": ("N", 3, 112)}, "3, 112]"),
        ({"output_shape": ("N", 256), "out_dim": 256}, "256"),
        (
            {"output_shape": ("N", "D"), "out_dim": 256},
            "256",
        ),  # symbolic width: inferred on load or caught by the probe run
    ],
)
def test_arcface_wrong_signature(tmp_path: Path, kwargs: dict, found: str) -> None:
    path = tmp_path / "wrong.onnx"
    _arcface_model(path, **kwargs)
    with pytest.raises(ModelSignatureError, match="expected one float input N x 3 x 112 x 112") as info:
        ArcFaceOnnxEncoder(path)
    assert "512" in str(info.value) and found in str(info.value)


def test_arcface_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSignatureError, match="not found"):
        ArcFaceOnnxEncoder(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model" * 10)
    with pytest.raises(ModelSignatureError, match="not a loadable ArcFace ONNX model"):
        ArcFaceOnnxEncoder(corrupt)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full(128, np.nan, np.float32), "NaN"),
        (np.zeros(128, np.float32), "all zeros"),
        (np.array(["a"] * 128), "not real numbers"),
        (np.ones(64, np.float32), r"shape \(64,\) but the model expects \(128,\)"),
    ],
)
def test_bad_identity_embeddings_are_one_clear_error(tmp_path, values, message):
    path = tmp_path / "identity.npy"
    np.save(path, values)
    with pytest.raises(PocketswapError, match=message):
        read_identity(path, 128)


def test_a_sample_photo_is_an_identity_everywhere():
    identity = read_identity("sample:grace_hopper", 128)
    assert identity.embedding.shape == (128,) and np.isfinite(identity.embedding).all()
    assert (identity.name, identity.source, identity.encoder, identity.crop) == (
        "grace_hopper",
        "sample:grace_hopper",
        "dlib",
        None,
    )


def test_an_identity_read_once_round_trips_whole_through_its_record():
    identity = read_identity("sample:grace_hopper", 128, size=96)
    assert identity.crop.shape == (96, 96, 3) and identity.landmarks.shape == (468, 2)
    again = Identity.from_record(json.loads(json.dumps(identity.to_record())))
    assert again.sha256 == identity.sha256 and np.array_equal(again.embedding, identity.embedding)
    assert np.array_equal(again.crop, identity.crop) and np.abs(again.landmarks - identity.landmarks).max() <= 5e-4
    assert again.face(96, "arcface") is not None and again.face(128, "arcface") is None
    record = identity.to_record() | {"embedding_sha256": "0" * 64}
    with pytest.raises(ConfigError, match="'embedding_sha256' does not match"):
        Identity.from_record(record, "manifest")
