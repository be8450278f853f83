"""Export stage: manifests, parity rules, errors, and real conversions of a nano student (slow).

Conversions run once per module (module-scoped fixtures) on the nano preset to keep CI time down.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from pocketswap.core.errors import CheckpointError, NoFaceError, PocketswapError
from pocketswap.core.manifest import (
    SYNTHETIC_MEDIA_NOTICE,
    Manifest,
    ManifestError,
    TensorInfo,
    manifest_path,
    read_manifest,
    write_manifest,
)
from pocketswap.core.runners import TFLiteRunner
from pocketswap.export import parity
from pocketswap.export.common import CalibrationError, ParityError, UnsupportedError, parse_list
from pocketswap.student.checkpoint import save_checkpoint
from pocketswap.student.config import get_preset
from pocketswap.student.network import StudentNet


def _unit(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _fit_to_faces(net: StudentNet, steps: int = 40) -> tuple[float, float]:
    """A few Adam steps teaching ``net`` to give back its input face under a full mask, so parity
    (int8 above all) is judged on a network whose outputs are faces, not random-weight noise.
    Returns the L1 to the input before and after."""
    from pocketswap.export.data import load_calibration, to_model_input

    faces = torch.from_numpy(to_model_input(load_calibration("samples", 128).crops))
    embedding = torch.from_numpy(_unit(128, 1))[None]  # id_a, the identity the tests bake
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def l1() -> torch.Tensor:
        return (net(faces, embedding)[0] - faces).abs().mean()

    net.eval()
    with torch.no_grad():
        before = float(l1())
    net.train()
    for step in range(steps):
        rows = torch.arange(step * 8, step * 8 + 8) % len(faces)
        image, mask = net(faces[rows], embedding)
        loss = (image - faces[rows]).abs().mean() + nn.functional.binary_cross_entropy(mask, torch.ones_like(mask))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        return before, float(l1())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A nano checkpoint fitted briefly to reproduce the bundled faces, and two identity embeddings."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    net = StudentNet(get_preset("nano"))
    before, after = _fit_to_faces(net)
    assert after < 0.5 * before, f"fixture fit did not learn the faces: L1 {before:.3f} -> {after:.3f}"
    ckpt = save_checkpoint(root / "ckpt", net, extra={"step": 40})
    np.save(root / "id_a.npy", _unit(128, 1))
    np.save(root / "id_b.npy", _unit(128, 2))
    return root, ckpt


# -- fast: formats, rules, errors ----------------------------------------------------------------


def _manifest(name: str = "m.tflite") -> Manifest:
    return Manifest(
        artifact=name,
        kind="student",
        runtime="tflite",
        precision="fp16",
        inputs=[TensorInfo("image", [1, 128, 128, 3], "float32", "NHWC", [-1.0, 1.0])],
        outputs=[TensorInfo("swapped", [1, 128, 128, 3], "float32", "NHWC", [-1.0, 1.0])],
        identity_mode="baked",
        preset="nano",
        crop_size=128,
    )


def test_manifest_round_trip_and_errors(tmp_path):
    artifact = tmp_path / "m.tflite"
    artifact.write_bytes(b"x")
    path = write_manifest(artifact, _manifest())
    assert path == tmp_path / "m.tflite.json" == manifest_path(artifact) == manifest_path(path)
    back = read_manifest(artifact)
    assert back.to_dict() == _manifest().to_dict() | {"created_utc": back.created_utc}
    assert back.input("image").layout == "NHWC" and back.notice == SYNTHETIC_MEDIA_NOTICE
    with pytest.raises(ManifestError, match="no output named 'mask'"):
        back.output("mask")
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="not a pocketswap artifact manifest"):
        read_manifest(artifact)
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "other.tflite")
    with pytest.raises(ManifestError, match="precision"):
        Manifest(artifact="a", kind="student", runtime="tflite", precision="int4", inputs=[], outputs=[])


def test_precision_and_format_lists():
    assert parse_list("fp32,fp16,int8", ("fp32", "fp16", "int8"), "precision") == ["fp32", "fp16", "int8"]
    assert parse_list("all", ("onnx", "tflite"), "format") == ["onnx", "tflite"]
    with pytest.raises(UnsupportedError, match="precision 'int4' is not supported; choose from fp32, fp16, int8"):
        parse_list("fp16,int4", ("fp32", "fp16", "int8"), "precision")


def test_parity_rules_name_the_failing_case():
    ref = np.zeros((1, 3, 4, 4), np.float32)
    case = parity.compare("face:astronaut", "swapped", ref, ref + 0.5, peak=2.0)
    assert case.max_abs == pytest.approx(0.5) and case.psnr_db == pytest.approx(10 * np.log10(4 / 0.25))
    record = parity.summarize([case], "fp16", "pytorch-fp32", depth=21)
    assert not record["passed"] and record["bound_used"] > 1
    with pytest.raises(ParityError, match="face:astronaut output 'swapped': max abs 0.5.*tolerance for 'swapped'"):
        parity.check(record, "m.tflite")
    with pytest.raises(ValueError, match="depth"):  # the fp16 rule scales with the network's depth
        parity.summarize([case], "fp16", "pytorch-fp32")
    face = parity.compare("face:x", "mask", ref, ref + 1e-3, 1.0)
    noise = parity.compare("random-0", "mask", ref, ref + 0.3, 1.0)  # int8 is gated on real faces only
    int8 = parity.summarize([face, noise], "int8", "pytorch-fp32")
    assert int8["passed"] and int8["min_psnr_db_real_faces"] == pytest.approx(60.0, abs=0.01)
    assert not parity.summarize([parity.compare("face:y", "mask", ref, ref + 0.3, 1.0)], "int8", "p")["passed"]


def test_fp16_bounds_scale_with_magnitude_and_depth():
    """fp16's bounds are multiples of u = 2^-11 times each output's largest magnitude S: mean abs sqrt(n) u S,
    max abs 4 n u S over n = depth roundings. One mask pixel 0.012 off (over the old fixed 1e-2; a distilled
    nano's fp16 compute read 0.014 on one mask pixel) passes at the nano's depth; 0.006 on every pixel (a
    broken conversion, under 1e-2 everywhere) does not, and an output 8 times larger gets 8 times the bounds."""
    u, depth = 2.0**-11, 21
    ref = np.random.default_rng(0).uniform(0, 1, (1, 1, 64, 64)).astype(np.float32)
    ref[0, 0, 0, 0] = 1.0
    noise = np.random.default_rng(1).normal(0, 1e-4, ref.shape).astype(np.float32)
    one_pixel = ref + noise
    one_pixel[0, 0, 5, 7] += 0.012
    healthy = parity.compare("face:a", "mask", ref, one_pixel, 1.0)
    image = parity.compare("face:a", "swapped", 2 * ref - 1, 2 * ref - 1 + noise, 2.0)
    record = parity.summarize([healthy, image], "fp16", "pytorch-fp32", depth=depth)
    bounds = record["tolerance"]["per_output"]
    assert record["passed"] and record["tolerance"]["depth"] == record["tolerance"]["roundings"] == depth
    assert bounds["mask"] == bounds["swapped"] == {"scale": 1.0, "mean_abs": pytest.approx(depth**0.5 * u, rel=1e-3),
                                                   "max_abs": pytest.approx(4 * depth * u, rel=1e-3)}  # fmt: skip
    assert record["bound_used"] == pytest.approx(healthy.max_abs / bounds["mask"]["max_abs"], rel=1e-2)
    assert not parity.summarize([healthy], "fp16", "p", depth=2)["passed"]  # a 2-layer net has no such excuse
    compute = parity.summarize([healthy], "fp16-compute", "p", depth=depth)["tolerance"]  # weights + activations
    assert compute["roundings"] == 2 * depth and compute["per_output"]["mask"]["max_abs"] == pytest.approx(
        2 * bounds["mask"]["max_abs"], rel=1e-3
    )
    shifted = parity.compare("face:a", "mask", ref, ref + 0.006, 1.0)  # every pixel 1.5 grey levels off
    assert shifted.max_abs < bounds["mask"]["max_abs"]
    broken = parity.summarize([shifted], "fp16", "pytorch-fp32", depth=depth)
    with pytest.raises(ParityError, match=r"mean abs 0.006.*tolerance for 'mask' \(scale 1, 21 roundings"):
        parity.check(broken, "m.tflite")
    wide = parity.compare("random-0", "identity", ref * 8, ref * 8 + 0.01, 2.0)
    assert wide.scale == 8.0
    assert parity.summarize([wide], "fp16", "p", depth=depth)["tolerance"]["per_output"]["identity"] == {
        k: pytest.approx(8 * v, rel=1e-3) for k, v in bounds["mask"].items()
    }


def _fp16_weights(module: nn.Module) -> nn.Module:
    """``module`` with every weight rounded to fp16 and computing in fp32: what the fp16 TFLite, ONNX and CoreML
    artifacts of a student compute (their parity figures agree with this to 3 significant digits)."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    return module


def test_fp16_bounds_on_the_fitted_student_and_faces(workspace):
    """The fitted nano's real outputs on the bundled faces (and noise): fp16 weights and fp16 compute pass
    their rules with room to spare; one conv's weights scaled by 3% (a perturbed weight in the converted
    model) and a hard sigmoid for the mask's sigmoid (a wrong op) fail."""
    from pocketswap.export.data import sample_crops, to_model_input
    from pocketswap.student.checkpoint import load_checkpoint

    root, ckpt = workspace
    net, config, _ = load_checkpoint(ckpt)
    module = net.bake(torch.from_numpy(np.load(root / "id_a.npy"))[None]).eval()
    rng = np.random.default_rng(0)
    cases = [("random-0", {"image": rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32)})]
    cases += [(case, {"image": to_model_input(crop)}) for case, crop in sample_crops(config.size, config.template)]
    assert sum(case.startswith("face:") for case, _ in cases) >= 2
    reference, depth = parity.torch_runner(module), parity.depth(module)
    assert depth == 21  # the baked nano's convolutions

    def record(run, precision="fp16"):
        return parity.summarize(parity.evaluate(cases, reference, run, parity.PEAKS), precision, "p", depth=depth)

    half = _fp16_weights(module)
    fp16 = record(parity.torch_runner(half))
    assert fp16["passed"] and fp16["bound_used"] < 0.2 and fp16["max_abs"] > 1e-4, fp16["bound_used"]
    compute = copy.deepcopy(half).half()

    @torch.no_grad()
    def run_compute(feeds):
        out = compute(torch.from_numpy(feeds["image"]).half())
        return {k: v.float().numpy() for k, v in zip(("swapped", "mask"), out, strict=True)}

    emulated = record(run_compute, "fp16-compute")
    assert emulated["passed"] and emulated["bound_used"] < 0.2

    def hard_sigmoid(feeds):  # the mask's sigmoid converted as a hard sigmoid
        out = parity.torch_runner(half)(feeds)
        logit = np.log(out["mask"]) - np.log1p(-out["mask"])
        return {**out, "mask": np.clip(logit / 6 + 0.5, 0, 1).astype(np.float32)}

    wrong_op = record(hard_sigmoid)
    with pytest.raises(ParityError, match="output 'mask'"):
        parity.check(wrong_op, "m.tflite")
    first = next(m for m in half.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first.weight.mul_(1.03)  # one weight tensor 3% off: 60 times fp16's rounding
    scaled = record(parity.torch_runner(half))
    with pytest.raises(ParityError, match="fp16 parity against p failed"):
        parity.check(scaled, "m.tflite")


def test_unsupported_layer_is_named(tmp_path):
    from pocketswap.export.onnx_export import export_onnx, lint_onnx

    class WithGroupNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(1, 8)

        def forward(self, x):
            return self.norm(self.conv(x))

    path = export_onnx(WithGroupNorm(), (torch.rand(1, 3, 16, 16),), tmp_path / "g.onnx", ["image"], ["out"])
    with pytest.raises(UnsupportedError, match="GroupNorm silently wrong") as err:
        lint_onnx(path)
    assert "norm" in str(err.value) or "conv" in str(err.value)


def _assert_nothing_left(out):
    assert not out.exists() or not any(out.iterdir()), f"left behind: {list(out.iterdir())}"


def test_bad_inputs_give_one_line_errors_and_leave_nothing(workspace, tmp_path):
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    out = tmp_path / "out"
    with pytest.raises(CalibrationError, match="int8 needs calibration data") as err:
        export_model(ckpt, out, identity=root / "id_a.npy", formats="tflite", precisions="int8")
    assert "\n" not in str(err.value)
    _assert_nothing_left(out)
    with pytest.raises(UnsupportedError, match="precision 'bf16'"):
        export_model(ckpt, out, identity=root / "id_a.npy", precisions="bf16")
    no_config = tmp_path / "weights_only"
    no_config.mkdir()
    shutil.copy(ckpt / "model.safetensors", no_config / "model.safetensors")
    with pytest.raises(CheckpointError, match="config"):
        export_model(no_config, out, identity=root / "id_a.npy")
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((256, 256, 3), 200, np.uint8))
    with pytest.raises(NoFaceError, match="no face found"):
        export_model(ckpt, out, identity=blank)
    np.save(tmp_path / "short.npy", np.ones(5, np.float32))
    with pytest.raises(PocketswapError, match="embedding has shape"):
        export_model(ckpt, out, identity=tmp_path / "short.npy")
    _assert_nothing_left(out)


def test_calibration_sources(tmp_path):
    """Dataset folder (attribute crops + embeddings), photo folder (detected + aligned), crops .npy."""
    import cv2

    from pocketswap.core.dataset import DatasetManifest, write_dataset_manifest
    from pocketswap.core.shards import Sample, ShardWriter
    from pocketswap.export.data import load_calibration, sample_crops
    from pocketswap.faces import samples

    crops = [c for _, c in sample_crops(128, "arcface", ("astronaut", "grace_hopper", "lfw_01"))]
    with ShardWriter(tmp_path / "ds" / "shard-000000.tar") as writer:
        for i, crop in enumerate(crops):
            emb = _unit(128, 10 + i)
            mask = np.ones((128, 128), np.float32)
            writer.write(Sample(f"k{i}", crop, crop, crop, mask, emb, np.zeros((468, 3), np.float32), {}))
        info = writer.close()
    manifest = DatasetManifest(size=128, num_samples=info.samples, shards=[info], teacher={},
                               embedding={"dim": 128}, seed=0, counts={}, identities=[], skipped=[])  # fmt: skip
    write_dataset_manifest(tmp_path / "ds", manifest)
    calib = load_calibration(tmp_path / "ds", 96, limit=2)
    assert calib.crops.shape == (2, 96, 96, 3) and calib.embeddings.shape == (2, 128)

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "grace_hopper"):
        cv2.imwrite(str(photos / f"{name}.jpg"), cv2.cvtColor(samples.load(name), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(photos / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    calib = load_calibration(photos, 128)
    assert calib.crops.shape == (2, 128, 128, 3) and calib.embeddings is None

    np.save(tmp_path / "crops.npy", np.stack(crops))
    assert load_calibration(tmp_path / "crops.npy", 128).crops.shape == (3, 128, 128, 3)
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "empty" / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(CalibrationError, match="no image with a detectable face"):
        load_calibration(tmp_path / "empty", 128)
    with pytest.raises(CalibrationError, match="no such file"):
        load_calibration(tmp_path / "missing", 128)


def test_cli_parses_export_and_patch_forms(workspace, capsys):
    from pocketswap.cli import _nested_parser, build_parser, main

    parser = build_parser()
    args = parser.parse_args(["export", "runs/x", "--identity", "a.npy", "--precision", "fp32,fp16", "--out", "o"])
    assert (args.source, args.precision) == ("runs/x", ["fp32,fp16"])
    spaced = parser.parse_args(
        ["export", "runs/x", "--precision", "fp32", "fp16", "--format", "onnx", "tflite", "--out", "o"]
    )
    precisions = ("fp32", "fp16", "int8")  # one list grammar: spaces, commas or both
    assert parse_list(spaced.precision, precisions, "precision") == parse_list(args.precision, precisions, "precision")
    assert parse_list(spaced.format, ("tflite", "coreml", "onnx"), "format") == ["tflite", "onnx"]
    patch, rest = _nested_parser(["-v", "export", "patch", "m.tflite", "--identity", "b.npy", "--checkpoint", "c",
                                  "--out", "n.tflite"])  # fmt: skip
    args = patch.parse_args(rest)
    assert (args.model, args.checkpoint, args.out, args.verbose) == ("m.tflite", "c", "n.tflite", True)
    assert _nested_parser(["export", "./patch", "--out", "o"]) is None  # a checkpoint folder named "patch"
    with pytest.raises(SystemExit) as exit_info:  # argparse names the missing flag, exit status 2
        main(["export", "patch", "m.tflite", "--identity", "b.npy", "--out", "n.tflite"])
    assert exit_info.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "patch", "--help"])
    assert "pocketswap export patch" in capsys.readouterr().out


# -- slow: real conversions ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def baked(workspace):
    """Baked nano, all formats, fp32 + fp16 + int8 (int8 calibrated on the bundled sample faces)."""
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    arts = export_model(
        ckpt, root / "baked", identity=root / "id_a.npy", formats="all", precisions="all", calibration="samples"
    )
    return {(a.manifest.runtime, a.manifest.precision): a for a in arts}


@pytest.mark.slow
def test_baked_artifacts_and_manifests(baked, workspace):
    _, ckpt = workspace
    assert set(baked) == {(r, p) for r in ("onnx", "tflite", "coreml") for p in ("fp32", "fp16", "int8")}
    sha = __import__("hashlib").sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    for (runtime, precision), art in baked.items():
        m = read_manifest(art.path)
        assert m.source["checkpoint_sha256"] == sha and m.notice == SYNTHETIC_MEDIA_NOTICE
        assert m.parity["passed"] and m.file_size_bytes > 0 and m.ops
        assert {c["case"].split(":")[0] for c in m.parity["cases"]} >= {"random-0", "face"}
        assert (m.crop_size, m.template, m.identity_mode, m.preset) == (128, "arcface", "baked", "nano")
        layout = "NHWC" if runtime == "tflite" else "NCHW"
        assert [t.name for t in m.inputs] == ["image"] and [t.name for t in m.outputs] == ["swapped", "mask"]
        assert all(t.layout == layout for t in m.inputs + m.outputs)
        if precision == "fp32":
            assert m.parity["max_abs"] <= 1e-4
        elif precision == "fp16":  # u = 2^-11 times each output's magnitude, over the baked nano's 21 layers
            bounds = m.parity["tolerance"]["per_output"]
            assert m.parity["bound_used"] <= 1 and m.parity["tolerance"]["depth"] == 21
            assert bounds["mask"]["max_abs"] == pytest.approx(4 * 21 * 2**-11 * bounds["mask"]["scale"], rel=1e-3)
        else:
            assert m.parity["min_psnr_db_real_faces"] >= 30
    assert not list(baked["tflite", "fp32"].path.parent.glob(".pocketswap-export-*"))


def _first_conv_weight(model) -> str:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return conv.input[1]


@pytest.mark.slow
def test_fp16_parity_fails_broken_conversions(workspace, tmp_path, monkeypatch):
    """What passes as fp16 (test_baked_artifacts_and_manifests) is not a blanket pass: a TFLite converted
    from a graph with its first conv's weights 3% off, and an fp16 ONNX graph whose mask sigmoid became a
    hard sigmoid, both fail parity and leave nothing behind."""
    import onnx
    from onnx import helper, numpy_helper

    from pocketswap.export import onnx_export, tflite
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    convert_tflite, convert_fp16 = tflite.convert_onnx, onnx_export.convert_onnx_fp16

    def perturbed_weight(onnx_path, *args, **kwargs):
        model = onnx.load(str(onnx_path))
        name = _first_conv_weight(model)
        init = next(i for i in model.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.03), name))
        onnx.save(model, str(onnx_path))
        return convert_tflite(onnx_path, *args, **kwargs)

    def wrong_op(src, dst):
        convert_fp16(src, dst)
        model = onnx.load(str(dst))
        node = next(n for n in model.graph.node if n.op_type == "Sigmoid")
        node.CopyFrom(helper.make_node("HardSigmoid", list(node.input), list(node.output), node.name, alpha=1 / 6))
        onnx.save(model, str(dst))
        return dst

    monkeypatch.setattr(tflite, "convert_onnx", perturbed_weight)
    monkeypatch.setattr(onnx_export, "convert_onnx_fp16", wrong_op)
    for fmt, artifact in (("tflite", "nano_baked_fp16.tflite"), ("onnx", "nano_baked_fp16.onnx")):
        out = tmp_path / fmt
        with pytest.raises(ParityError, match=f"{artifact}: fp16 parity against pytorch-fp32 failed"):
            export_model(ckpt, out, identity=root / "id_a.npy", formats=fmt, precisions="fp16")
        assert not out.exists()


@pytest.mark.slow
def test_tflite_is_nhwc_named_and_fully_delegated(baked):
    from pocketswap.export import tflite

    for precision in ("fp32", "fp16", "int8"):
        art = baked["tflite", precision]
        inputs, outputs = tflite.io_details(art.path)
        assert inputs == [{"name": "image", "shape": [1, 128, 128, 3], "dtype": "float32"}]
        assert [(o["name"], o["shape"]) for o in outputs] == [("swapped", [1, 128, 128, 3]), ("mask", [1, 128, 128, 1])]
        assert art.manifest.delegation["fully_accelerated"], art.manifest.delegation
        assert "RESIZE_NEAREST_NEIGHBOR" not in art.manifest.ops
    runner = TFLiteRunner(baked["tflite", "fp32"].path)
    assert runner.interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": ["mask", "swapped"]}
    }


@pytest.mark.slow
def test_onnx_checker_and_runtime(baked):
    import onnx

    for precision in ("fp32", "fp16", "int8"):
        model = onnx.load(str(baked["onnx", precision].path))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == ["image"]


@pytest.mark.slow
def test_coreml_package_validates_on_linux(baked):
    from pocketswap.export import coreml

    for precision in ("fp16", "int8"):
        art = baked["coreml", precision]
        info = coreml.inspect(art.path)
        assert info["is_ml_program"] and info["specification_version"] >= 7  # iOS 16
        assert [f["name"] for f in info["inputs"]] == ["image"] and info["inputs"][0]["type"] == "float32"
        assert [(f["name"], f["shape"]) for f in info["outputs"]] == [
            ("swapped", [1, 3, 128, 128]),
            ("mask", [1, 1, 128, 128]),
        ]
        assert "conv" in info["ops"] and "upsample_bilinear" in info["ops"]
        assert art.manifest.extra["compute_precision"] == "FLOAT16"
    assert "constexpr_affine_dequantize" in baked["coreml", "int8"].manifest.ops or any(
        "dequantize" in op for op in baked["coreml", "int8"].manifest.ops
    )
    assert baked["coreml", "int8"].manifest.file_size_bytes < baked["coreml", "fp16"].manifest.file_size_bytes


@pytest.mark.slow
@pytest.mark.skipif(
    platform.system() != "Darwin", reason="CoreML predict() runs only on macOS; Linux checks weights in PyTorch"
)
def test_coreml_predict_matches_pytorch_on_macos(baked):
    for precision in ("fp32", "fp16"):
        record = baked["coreml", precision].manifest.extra["coreml_predict_parity"]
        assert record["passed"], record


@pytest.mark.slow
def test_coreml_image_input_and_palettization(workspace, tmp_path):
    from pocketswap.export import coreml
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    (art,) = export_model(
        ckpt,
        tmp_path,
        identity=root / "id_a.npy",
        formats="coreml",
        precisions="fp16",
        image_input=True,
        compress="palettize4",
    )
    assert art.path.name == "nano_baked_fp16_image_palettize4.mlpackage"
    info = coreml.inspect(art.path)
    assert info["inputs"][0] == {"name": "image", "type": "image", "shape": [1, 3, 128, 128], "color": "RGB"}
    assert "constexpr_lut_to_dense" in info["ops"]
    m = art.manifest
    assert m.parity["passed"] and m.parity["min_psnr_db"] >= parity.COMPRESSION_MIN_PSNR["palettize4"]
    assert m.parity["weights_replaced"] > 0 and m.patch is None  # compressed weights are not patchable
    assert m.inputs[0].range == [0.0, 255.0]


@pytest.fixture(scope="module")
def fresh_b(workspace):
    """A fresh fp32/fp16 TFLite + fp16 CoreML export of identity B, to compare patched models with."""
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    arts = export_model(
        ckpt, root / "fresh_b", identity=root / "id_b.npy", formats="tflite,coreml", precisions="fp32,fp16"
    )
    return {(a.manifest.runtime, a.manifest.precision): a for a in arts}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_patched_tflite_matches_fresh_export(baked, fresh_b, workspace, tmp_path, precision):
    from pocketswap.cli import main
    from pocketswap.export.data import sample_crops, to_model_input

    root, ckpt = workspace
    src = baked["tflite", precision].path
    assert len(baked["tflite", precision].manifest.patch["tensors"]) == 8  # 2 per decoder block
    out = tmp_path / f"b_{precision}.tflite"
    assert (
        main(
            [
                "export",
                "patch",
                str(src),
                "--identity",
                str(root / "id_b.npy"),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    patched = read_manifest(out)
    assert patched.parity["passed"] and patched.source["patched_from"] == src.name
    assert patched.extra["patch_rewrite_ms"] > 0  # recorded; its speed is quoted from the benchmark, not asserted
    feeds = {"image": to_model_input(sample_crops(128)[0][1])}
    got = TFLiteRunner(out)(feeds)
    want = TFLiteRunner(fresh_b["tflite", precision].path)(feeds)
    for name in ("swapped", "mask"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6 if precision == "fp32" else 2e-3)
    again = tmp_path / "back_to_a.tflite"  # a patched file can be patched again
    main(
        [
            "export",
            "patch",
            str(out),
            "--identity",
            str(root / "id_a.npy"),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(again),
        ]
    )
    assert again.read_bytes() == src.read_bytes()


@pytest.mark.slow
def test_baked_weights_model_gives_the_patch_bytes(baked, fresh_b, workspace):
    """What an app does on device: hypernetwork output -> bytes at the manifest's offsets -> new identity."""
    from pocketswap.export.data import load_student
    from pocketswap.export.enroll import BakedWeightsModule
    from pocketswap.export.patch import baked_identity_tensors, patch_bytes, read_tensor

    root, ckpt = workspace
    net, *_ = load_student(ckpt)
    record = baked["tflite", "fp32"].manifest.patch
    with torch.no_grad():
        flat = BakedWeightsModule(net, record["tensors"])(torch.from_numpy(np.load(root / "id_b.npy"))[None]).numpy()[0]
    data = bytearray(baked["tflite", "fp32"].path.read_bytes())
    start = 0
    for entry in record["tensors"]:
        n = int(np.prod(entry["torch_shape"]))
        data[entry["offset"] : entry["offset"] + entry["nbytes"]] = flat[start : start + n].astype(np.float32).tobytes()
        start += n
    assert start == flat.size
    names = [e["name"] for e in record["tensors"]]
    exact = patch_bytes(
        baked["tflite", "fp32"].path.read_bytes(),
        record,
        baked_identity_tensors(net, torch.from_numpy(np.load(root / "id_b.npy")), names),
    )
    for entry in record["tensors"]:  # same floats as the exact patch, up to float rounding
        np.testing.assert_allclose(
            read_tensor(bytes(data), entry), read_tensor(bytes(exact), entry), rtol=1e-5, atol=1e-6
        )


@pytest.mark.slow
def test_patched_mlpackage_has_the_new_identity_weights(baked, fresh_b, workspace, tmp_path):
    from pocketswap.export.coreml import artifact_weights
    from pocketswap.export.patch import patch_model

    root, ckpt = workspace
    result = patch_model(baked["coreml", "fp16"].path, root / "id_b.npy", ckpt, tmp_path / "b.mlpackage")
    assert result.parity["passed"]
    got = artifact_weights(result.path)
    want = artifact_weights(fresh_b["coreml", "fp16"].path)
    assert got.keys() == want.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_patch_refuses_other_checkpoints_and_unpatchable_models(baked, workspace, tmp_path):
    from pocketswap.export.patch import patch_model

    root, _ = workspace
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other", StudentNet(get_preset("nano")))
    with pytest.raises(CheckpointError, match="not the checkpoint"):
        patch_model(baked["tflite", "fp32"].path, root / "id_b.npy", other, tmp_path / "x.tflite")
    with pytest.raises(UnsupportedError, match="no patch map"):
        patch_model(baked["tflite", "int8"].path, root / "id_b.npy", root / "ckpt", tmp_path / "y.tflite")
    assert not (tmp_path / "x.tflite").exists() and not (tmp_path / "y.tflite").exists()


@pytest.mark.slow
def test_dynamic_identity_and_enrollment_models(workspace):
    """Dynamic student + encoder + hypernetwork as TFLite: the on-device enrollment chain reproduces PyTorch."""
    from pocketswap.export.data import load_student, sample_crops, to_model_input
    from pocketswap.export.pipeline import export_model

    root, ckpt = workspace
    arts = export_model(
        ckpt, root / "dynamic", formats="tflite", precisions="fp32", identity_mode="dynamic", enroll=True
    )
    by_name = {a.path.name: a for a in arts}
    student = by_name["nano_dynamic_fp32.tflite"]
    assert student.manifest.delegation["fully_accelerated"]
    assert [(t.name, t.shape) for t in student.manifest.inputs] == [
        ("image", [1, 128, 128, 3]),
        ("identity", [1, 7440]),
    ]
    assert {"dlib_encoder_fp32.tflite", "nano_hypernet_fp32.tflite"} <= set(by_name)
    assert "nano_baked_weights_fp32.tflite" not in by_name  # only for baked exports

    # Chain: face chip -> encoder -> hypernetwork -> dynamic student, against PyTorch end to end.
    net, *_ = load_student(ckpt)
    chip = sample_crops(150, "dlib")[0][1]
    embedding = TFLiteRunner(by_name["dlib_encoder_fp32.tflite"].path)(
        {"chip": chip.transpose(2, 0, 1)[None].astype(np.float32)}
    )["embedding"]
    params = TFLiteRunner(by_name["nano_hypernet_fp32.tflite"].path)({"embedding": embedding})["identity"]
    crop = to_model_input(sample_crops(128)[0][1])
    out = TFLiteRunner(student.path)({"image": crop, "identity": params})
    with torch.no_grad():
        want_params = net.identity_params(torch.from_numpy(embedding))
        want = net(torch.from_numpy(crop), torch.from_numpy(embedding))
    np.testing.assert_allclose(params, want_params.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["swapped"], want[0].numpy(), atol=1e-4)
