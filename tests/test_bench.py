"""Latency harness, CI gate (passes on an unchanged model, fails on a slowed one), roofline, references."""

import json

import pytest
import torch
from torch import nn

from pocketswap.benchmarks.gate import load_baseline, run_gate, update_baseline
from pocketswap.benchmarks.latency import bench_artifact
from pocketswap.benchmarks.references import count_params_and_macs, mobilefaceswap_student, simswap_size_generator
from pocketswap.benchmarks.roofline import estimate_presets, load_profiles
from pocketswap.cli import main
from pocketswap.core.errors import ConfigError
from pocketswap.student import StudentNet, get_preset


def _export_convnet(path, width: int) -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Conv2d(width, 3, 1)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 96, 96),), str(path), input_names=["image"], dynamo=False)


@pytest.mark.slow
def test_gate_passes_unchanged_and_fails_slowed_model(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    _export_convnet(model, 16)
    baseline = tmp_path / "baseline.json"
    update_baseline(baseline, [str(model)], runs=30, rounds=2)
    assert set(load_baseline(baseline)["targets"]) == {str(model)}

    rows, _ = run_gate(baseline, runs=30, rounds=2)
    assert not rows[0].regressed(1.5), rows[0]

    _export_convnet(model, 48)  # same name, ~9x the MACs
    code = main(["bench", "gate", "--baseline", str(baseline), "--max-ratio", "1.2", "--runs", "30", "--rounds", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "REGRESSED" in captured.out and "latency gate FAILED" in captured.err


def test_gate_without_baseline_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="--update"):
        load_baseline(tmp_path / "missing.json")


def test_gate_refuses_a_baseline_whose_frozen_artifact_changed(tmp_path):
    model = tmp_path / "model.onnx"
    _export_convnet(model, 8)
    baseline = tmp_path / "baseline.json"
    update_baseline(baseline, [str(model)], runs=3, rounds=1)
    frozen = tmp_path / "baseline" / "model.onnx"
    assert frozen.read_bytes() == model.read_bytes()
    frozen.write_bytes(frozen.read_bytes()[:100])
    with pytest.raises(ConfigError, match="frozen artifact of .* missing or changed.*--update"):
        load_baseline(baseline)


def test_gate_refuses_torch_eager_targets(tmp_path):
    with pytest.raises(ConfigError, match="preset:nano:onnx"):
        update_baseline(tmp_path / "baseline.json", ["preset:nano"], runs=3, rounds=1)


def test_latency_records_for_onnx_and_json(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    _export_convnet(model, 8)
    record = bench_artifact(model, threads=1, runs=10)
    assert record.runtime == "onnxruntime" and 0 < record.p5_ms <= record.median_ms <= record.p95_ms
    assert record.size_mb > 0 and record.peak_memory_mb > 10
    out = tmp_path / "lat.json"
    assert main(["bench", "latency", str(model), "--threads", "1,2", "--runs", "5", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["threads"] for r in records] == [1, 2]


def test_latency_of_checkpoints_with_and_without_a_spatial_identity_encoder(tmp_path):
    from pocketswap.student.checkpoint import save_checkpoint

    for encoder in (False, True):  # a spatial-identity student bakes an identity crop too
        config = get_preset("nano").replace(identity_encoder=encoder)
        checkpoint = save_checkpoint(tmp_path / f"ckpt-{encoder}", StudentNet(config).eval())
        record = bench_artifact(checkpoint, threads=1, runs=3)
        assert record.runtime == "torch-eager" and record.median_ms > 0 and record.size_mb > 0


def test_corrupt_and_truncated_artifacts_are_one_line(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    _export_convnet(model, 8)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:500])
    garbage = tmp_path / "random.tflite"
    garbage.write_bytes(bytes(range(256)) * 40)
    for path in (truncated, garbage):
        assert main(["bench", "latency", str(path), "--runs", "2"]) == 2
        err = capsys.readouterr().err
        assert f"{path}: not a loadable {path.suffix} model" in err and "Traceback" not in err


def test_reference_networks_have_their_published_scale():
    params, gmac = count_params_and_macs(*_unpack(simswap_size_generator()))
    assert 40e6 < params < 120e6 and 40 < gmac < 60  # AdaIN ResNet generator at 224
    params, gmac = count_params_and_macs(*_unpack(mobilefaceswap_student()))
    assert 0.4e6 < params < 0.6e6 and 0.2 < gmac < 0.35  # MobileFaceSwap: 0.50 M, 0.306 GMAC


def _unpack(pair):
    model, inputs = pair
    return (model, *inputs)


def test_roofline_estimates_are_labelled_and_ordered():
    assert all(p["sources"] for p in load_profiles())
    estimates = {(e.phone, e.preset, e.precision): e for e in estimate_presets(["nano", "base"], ["fp32", "fp16"])}
    nano = estimates[("galaxy-s24-snapdragon", "nano", "fp32")]
    base = estimates[("galaxy-s24-snapdragon", "base", "fp32")]
    assert "estimate" in nano.label
    assert base.estimate_ms > nano.estimate_ms > 0
    assert estimates[("galaxy-s24-snapdragon", "base", "fp16")].estimate_ms < base.estimate_ms
    assert estimates[("budget-snapdragon-680", "base", "fp32")].estimate_ms > base.estimate_ms


@pytest.mark.slow
def test_quality_on_a_user_folder_scores_student_and_teacher(tmp_path):
    from pocketswap.benchmarks.quality import bench_quality
    from pocketswap.core.imageio import write_image
    from pocketswap.faces import samples
    from pocketswap.student.checkpoint import save_checkpoint

    faces = tmp_path / "faces"
    for name in ("astronaut", "grace_hopper", "lfw_01"):
        write_image(faces / f"{name}.png", samples.load(name))
    (faces / "broken.jpg").write_bytes(b"not a jpeg")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "ckpt", StudentNet(get_preset("nano")).eval())
    report = bench_quality(checkpoint, faces, tmp_path / "q", pairs=6)
    assert report["kind"] == "quality" and report["num_samples"] == 6
    student, teacher = report["metrics"]["student"], report["metrics"]["teacher"]
    for metric in ("id_cosine", "id_retrieval_top1", "expression_error", "pose_error_deg"):
        assert student[metric] is not None and teacher[metric] is not None
    assert student["psnr_face"] is not None and teacher["psnr_face"] is None  # the teacher is the reference
    assert teacher["id_cosine"] > report["metrics"]["attribute"]["id_cosine"]  # the teacher moves identity
    assert json.loads((tmp_path / "q" / "quality.json").read_text())["kind"] == "quality"
