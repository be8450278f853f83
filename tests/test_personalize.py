"""Personalisation: one-identity pairs, identity maps, the attribute-held-out split, the identity
lock of personalised checkpoints and the end-to-end `distill personalize` command on real faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketswap.cli import main
from pocketswap.core.checkpoint import locked_identity
from pocketswap.core.dataset import DatasetReader
from pocketswap.core.errors import ConfigError, ImageReadError, ModelSignatureError, NoFaceError
from pocketswap.core.imageio import write_image
from pocketswap.core.manifest import ManifestError, decode_texture, encode_texture, read_manifest
from pocketswap.core.shards import DatasetError
from pocketswap.demo.model_info import comparison, comparison_run
from pocketswap.demo.pipeline import LiveSwapper
from pocketswap.demo.swap_model import load_swap_model
from pocketswap.distill.data import Split, make_split
from pocketswap.distill.metrics import identity_transfer
from pocketswap.export.data import align_photo_landmarks
from pocketswap.faces import samples
from pocketswap.faces.analyzer import shared_analyzer
from pocketswap.faces.warp import triangulate
from pocketswap.student import StudentNet
from pocketswap.student.checkpoint import load_checkpoint, save_checkpoint
from pocketswap.student.config import get_preset
from pocketswap.teacher.analysis import analyze_identity
from pocketswap.teacher.generate import GenerateConfig, generate

POOL = ("astronaut", "lfw_00", "lfw_01", "lfw_02", "lfw_03", "lfw_04", "grace_hopper")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A folder of real faces, the identity's own photo (grace_hopper) among them."""
    root = tmp_path_factory.mktemp("pool")
    for name in POOL:
        write_image(root / f"{name}.png", samples.load(name))
    return root


def test_identity_maps_fold_into_baked_and_dynamic_students():
    torch.manual_seed(0)
    for maps in ("skips", "head", "both"):
        net = StudentNet(get_preset("nano", size=64, identity_maps=maps)).eval()
        assert net.skip_maps or net.head_map is not None
        for p in [*net.skip_maps.values(), *([net.head_map] if net.head_map is not None else [])]:
            p.data.normal_(std=0.5)
        x, e = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(1, 128)
        image, mask = net(x, e)
        baked_image, baked_mask = net.bake(e)(x)
        dynamic_image, _ = net.dynamic()(x[:1], net.identity_params(e))
        assert torch.allclose(image, baked_image, atol=1e-5) and torch.allclose(mask, baked_mask, atol=1e-5)
        assert torch.allclose(image[:1], dynamic_image, atol=1e-5)


def test_zero_identity_maps_change_nothing():
    torch.manual_seed(0)
    universal = StudentNet(get_preset("nano", size=64)).eval()
    personal = StudentNet(get_preset("nano", size=64, identity_maps="both")).eval()
    missing = personal.load_state_dict(universal.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["head_map", "skip_maps.0", "skip_maps.1", "skip_maps.2"]  # the 32 px skip has none
    x, e = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(1, 128)
    assert torch.equal(universal(x, e)[0], personal(x, e)[0])


def test_attribute_split_and_holdout():
    faces = [f"face_{i}" for i in range(20)]
    split = make_split(faces, 0.1, by="attribute", always=("face_7",))
    assert "face_7" in split.val_names and len(split.val_names) == 2
    meta = {"identity": "identity:me", "identity_sources": ["identity:me"], "attribute": "face_7"}
    assert split.role("k", meta) == "val"
    assert split.role("k", {**meta, "attribute": sorted(set(faces) - split.val_names)[0]}) == "train"
    assert Split.from_dict(split.to_dict()) == split
    with pytest.raises(DatasetError, match="holdout"):
        make_split(faces, 0.1, by="attribute", always=("nobody",))


def test_identity_transfer_figures():
    target = np.array([[1.0, 0.0]])
    inputs = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    swaps = np.array([[1.0, 0.01], [1.0, 1.0], [-0.2, 1.0]])  # same person; closer; farther
    figures = identity_transfer(swaps, inputs, target.repeat(3, 0), threshold=0.095)
    assert figures["same_person"] == pytest.approx(1 / 3) and figures["moved_closer"] == pytest.approx(2 / 3)


def test_fixed_identity_pairs(pool, tmp_path):
    cfg = GenerateConfig(out=str(tmp_path / "data"), faces=str(pool), pairs=16, size=64, identity="sample:grace_hopper",
                         shard_size=8, same_identity_share=0.25)  # fmt: skip
    manifest = generate(cfg, progress=False).manifest
    assert manifest.identity["name"] == "identity:grace_hopper" and len(manifest.identity["embedding"]) == 128
    assert "grace_hopper.png" not in manifest.identities  # the identity's own photo is no attribute
    reader = DatasetReader(tmp_path / "data")
    embedding = np.asarray(manifest.identity["embedding"], np.float32)
    kinds = set()
    for sample in reader:
        assert sample.meta["identity"] == "identity:grace_hopper"
        assert np.allclose(sample.id_embedding, embedding, atol=1e-6)
        kinds.add(sample.meta["pair"])
        if sample.meta["pair"] == "cross":
            assert sample.meta["attribute"] in manifest.identities
    assert kinds == {"same", "cross"}


def test_identity_photo_errors(tmp_path):
    def identity(spec: str) -> GenerateConfig:
        return GenerateConfig(size=64, identity=spec)

    with pytest.raises(ImageReadError, match="no such file"):
        analyze_identity(identity(str(tmp_path / "missing.jpg")))
    blank = write_image(tmp_path / "blank.png", np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="no face"):
        analyze_identity(identity(str(blank)))
    face = samples.load("grace_hopper")
    two = write_image(tmp_path / "two.png", np.concatenate([face, face[:, ::-1]], axis=1))
    with pytest.raises(ConfigError, match="2 faces"):
        analyze_identity(identity(str(two)))


def test_locked_identity_refuses_another_person():
    own = np.zeros(128, np.float32)
    own[0] = 1.0
    extra = {"identity": {"name": "identity:me", "source": "me.jpg", "embedding": own.tolist()}}
    close = own + np.r_[0.0, 0.05, np.zeros(126)].astype(np.float32)
    assert np.array_equal(locked_identity(extra, close, "me2.jpg", 0.095), own)  # same person: baked with its own
    other = np.roll(own, 1)
    with pytest.raises(ConfigError, match="personalised for identity:me"):
        locked_identity(extra, other, "you.jpg", 0.095)
    assert locked_identity({}, other, "you.jpg", 0.095) is other  # universal students take anyone


def test_a_personalised_run_exports_from_its_recorded_identity_without_the_photo(tmp_path, capsys):
    own = np.zeros(128, np.float32)
    own[0] = 1.0
    record = {"name": "me", "source": str(tmp_path / "moved.jpg"), "embedding": own.tolist()}
    checkpoint = save_checkpoint(tmp_path / "me", StudentNet(get_preset("nano", size=64)), extra={"identity": record})
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "out")]) == 0
    (artifact,) = (tmp_path / "out").glob("*.onnx")
    baked = read_manifest(artifact).identity()
    assert (baked.name, baked.source) == ("me", record["source"]) and np.array_equal(baked.embedding, own)


def test_a_spatial_personalised_run_without_its_face_asks_for_the_photo(tmp_path, capsys):
    own = np.zeros(128, np.float32)
    own[0] = 1.0
    record = {"name": "me", "source": str(tmp_path / "moved.jpg"), "embedding": own.tolist()}  # an older record
    net = StudentNet(get_preset("nano", size=64, identity_encoder=True))
    checkpoint = save_checkpoint(tmp_path / "me", net, extra={"identity": record})
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "personalised for me from" in err and "which is gone and its checkpoint keeps no face" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_personalize_end_to_end(pool, tmp_path, capsys):
    torch.manual_seed(0)
    universal = tmp_path / "universal"
    save_checkpoint(universal, StudentNet(get_preset("nano", size=64)), extra={"step": 0})
    out = tmp_path / "personal"
    argv = ["distill", "personalize", str(universal), "--identity", "sample:grace_hopper", "--out", str(out),
            "--faces", str(pool), "--pairs", "24", "--steps", "3", "--workers", "1", "--no-progress",
            "batch_size=4", "val_samples=4", "checkpoint_every=2", "holdout=[astronaut.png]", "threads=1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "personalised" in printed and "next: pocketswap export" in printed

    net, config, extra = load_checkpoint(out / "best")
    assert config.identity_maps == "both" and extra["identity"]["name"] == "identity:grace_hopper"
    assert config.identity_encoder and config.identity_warp  # it reads her face warped onto each frame
    report = json.loads((out / "eval.json").read_text())
    assert list(report["metrics"]) == ["personalised", "universal", "teacher", "attribute"]
    assert report["num_samples"] > 0 and all("same_person" in m for m in report["metrics"].values())
    assert {"astronaut.png"} <= set(json.loads((out / "run.json").read_text())["split"]["val_names"])
    assert (out / "compare.png").is_file()
    shown = comparison(comparison_run(out / "best"))  # the app's Compare tab
    assert list(shown["rows"]) == ["teacher", "universal", "personalised", "attribute"]
    assert shown["rows"]["personalised"]["same_person"] == report["metrics"]["personalised"]["same_person"]
    # The person's real face in every pair: a mirrored or recoloured identity would be a second target.
    metas = [sample.meta for sample in DatasetReader(out / "data")]
    assert metas and not any(m["augment"].get("flip_identity") or m["augment"].get("color_identity") for m in metas)
    assert any(m["augment"].get("flip_attribute") for m in metas)  # the attribute faces still vary

    # Rerunning without --resume would mix runs: refused; with --resume nothing is redone.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["step"] == 3

    # The checkpoint exports for its own person only.
    artifacts = tmp_path / "artifacts"
    export = ["export", str(out), "--format", "onnx", "--precision", "fp32", "--out", str(artifacts)]
    assert main([*export, "--identity", "sample:astronaut"]) == 2
    assert "personalised for identity:grace_hopper" in capsys.readouterr().err
    assert main(export) == 0  # without --identity: the identity its checkpoint carries (the photo is not read)
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("next: pocketswap bench latency")
    manifest = json.loads(next(artifacts.glob("*.onnx.json")).read_text())
    assert manifest["source"]["identity"] == extra["identity"]  # the Identity, stored whole at every stage
    assert manifest["identity_texture"]["png_base64"] == extra["identity"]["face"]["png_base64"]
    assert [t["name"] for t in manifest["inputs"]] == ["image", "identity_warped"]
    assert manifest["parity"]["passed"] and len(manifest["identity_texture"]["landmarks"]) == 468

    # The artifact runs on a frame's face: its identity texture warped onto the face's landmarks.
    model = load_swap_model(next(artifacts.glob("*.onnx")))
    crop, landmarks = align_photo_landmarks(samples.load("astronaut"), 64, "arcface")
    assert model.needs_landmarks and model(crop, landmarks)[0].shape == crop.shape
    with pytest.raises(ModelSignatureError, match="landmarks"):
        model(crop)
    frame = samples.load("astronaut")
    result = LiveSwapper(model, shared_analyzer()).process(frame)
    assert result.crops and not np.array_equal(result.frame, frame)
    manifest_file = next(artifacts.glob("*.onnx.json"))  # a manifest that lost the texture: one clear error
    manifest_file.write_text(json.dumps({k: v for k, v in manifest.items() if k != "identity_texture"}))
    with pytest.raises(ModelSignatureError, match="identity_texture"):
        load_swap_model(next(artifacts.glob("*.onnx")))


def test_personalize_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["distill", "personalize", str(tmp_path / "empty"), "--identity", "sample:grace_hopper", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_spatial_identity_maps_fold_and_start_at_zero():
    torch.manual_seed(0)
    plain = StudentNet(get_preset("nano", size=64)).eval()
    spatial = StudentNet(get_preset("nano", size=64, identity_encoder=True)).eval()
    spatial.load_state_dict(plain.state_dict(), strict=False)
    x, e, crop = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(1, 128), torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(plain(x, e)[0], spatial(x, e, crop)[0])  # zero-initialised projections
    for p in spatial.spatial.parameters():
        p.data.normal_(std=0.3)
    other = torch.rand(1, 3, 64, 64) * 2 - 1
    assert not torch.allclose(spatial(x, e, crop)[0], spatial(x, e, other)[0])  # the crop now matters
    assert torch.allclose(spatial(x, e, crop)[0], spatial.bake(e, crop)(x)[0], atol=1e-5)
    with pytest.raises(ConfigError, match="identity crop"):
        spatial(x, e)
    with pytest.raises(ConfigError, match="baked only"):
        spatial.dynamic()


def test_warped_identity_student_bakes_with_a_second_input():
    torch.manual_seed(0)
    net = StudentNet(get_preset("nano", size=64, identity_encoder=True, identity_warp=True, identity_maps="both"))
    for p in [*net.spatial.parameters(), *net.skip_maps.values(), net.head_map]:
        p.data.normal_(std=0.2)
    net.eval()
    x, e = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 128)
    warped, other = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    baked = net.bake(e)
    for w in (warped, other):  # the warp is a run-time input: the baked net follows it, frame by frame
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(net(x, e, w), baked(x, w), strict=True))
    assert not torch.allclose(baked(x, warped)[0], baked(x, other)[0])
    with pytest.raises(ConfigError, match="identity_warped"):
        baked(x)
    with pytest.raises(ConfigError, match="identity_encoder"):
        get_preset("nano", identity_warp=True)


@pytest.mark.slow
def test_composing_256_student_exports_exact_and_fully_delegated(tmp_path):
    """nano256 (the UNet at 128 px, composed at 256): TFLite fp32 and int8 keep parity and run entirely in
    XNNPACK (its pooling is a depthwise convolution: an int8 AVERAGE_POOL_2D fell out of the delegate)."""
    from pocketswap.export.pipeline import export_model

    torch.manual_seed(0)
    net = StudentNet(get_preset("nano256"))
    for p in [*net.spatial.parameters(), net.head.composer.take.weight]:
        p.data.normal_(std=0.1)
    ckpt = save_checkpoint(tmp_path / "ckpt", net.eval())
    arts = export_model(ckpt, tmp_path / "out", identity="sample:grace_hopper", formats="tflite",
                        precisions="fp32,int8", calibration="samples")  # fmt: skip
    assert {a.manifest.precision for a in arts} == {"fp32", "int8"}
    for art in arts:
        m = art.manifest
        assert m.crop_size == 256 and [t.shape for t in m.inputs] == [[1, 256, 256, 3]] * 2
        assert m.parity["passed"] and m.delegation["fully_accelerated"], (m.precision, m.delegation)
        assert "AVERAGE_POOL_2D" not in m.ops


def test_identity_texture_round_trips_and_names_a_malformed_manifest():
    crop, landmarks = align_photo_landmarks(samples.load("grace_hopper"), 64, "arcface")
    triangles = triangulate(landmarks)
    texture = encode_texture(crop, landmarks, triangles, 0.5)
    image, points, mesh, shape = decode_texture(texture)
    assert np.array_equal(image, crop) and np.allclose(points, landmarks[:, :2], atol=1e-3)
    assert np.array_equal(mesh, triangles) and shape == 0.5
    older = decode_texture({k: v for k, v in texture.items() if k not in ("triangles", "shape")})
    assert older.triangles is None and older.shape == 0.0  # manifests written before they were stored
    with pytest.raises(ManifestError, match="'triangles'"):
        decode_texture({**texture, "triangles": [[0, 1, 468]]}, "m.json")
    with pytest.raises(ManifestError, match="'shape'"):
        decode_texture({**texture, "shape": 1.5}, "m.json")
    with pytest.raises(ManifestError, match="identity_texture"):
        decode_texture({**texture, "png_base64": "not base64!"}, "m.json")
    with pytest.raises(ManifestError, match="identity_texture"):
        decode_texture({"landmarks": texture["landmarks"]}, "m.json")


@pytest.mark.slow
def test_spatial_identity_student_exports_baked_from_a_photo(tmp_path, capsys):
    torch.manual_seed(0)
    net = StudentNet(get_preset("nano", size=64, identity_encoder=True))
    for p in net.spatial.parameters():
        p.data.normal_(std=0.1)
    ckpt = save_checkpoint(tmp_path / "ckpt", net.eval())
    out = tmp_path / "artifacts"
    base = ["export", str(ckpt), "--format", "onnx", "--precision", "fp32", "--out", str(out)]
    assert main([*base, "--identity", "sample:grace_hopper"]) == 0
    manifest = json.loads(next(out.glob("*.onnx.json")).read_text())
    assert manifest["parity"] and manifest["identity_mode"] == "baked"
    np.save(tmp_path / "emb.npy", np.ones(128, np.float32) / np.sqrt(128))
    assert main([*base, "--identity", str(tmp_path / "emb.npy")]) == 2
    assert "needs the identity's photo" in capsys.readouterr().err
    assert main([*base, "--identity-mode", "dynamic"]) == 2
    assert "exports baked" in capsys.readouterr().err
