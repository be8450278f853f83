"""Distillation: losses, config validation, identity split, training, exact resume, divergence
handling, DDP, evaluation report. Runs on a tiny dataset of real sample faces (64 px crops)."""

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

from pocketswap.core.config import parse_overrides
from pocketswap.core.dataset import DatasetManifest, write_dataset_manifest
from pocketswap.core.errors import ConfigError
from pocketswap.core.metrics import psnr, ssim, ssim_map_torch
from pocketswap.core.shards import Sample, ShardWriter, shard_name
from pocketswap.distill.config import TrainConfig
from pocketswap.distill.data import TrainStream, iter_split, make_split, pair_faces
from pocketswap.distill.evaluate import COLUMNS, METRICS
from pocketswap.distill.logs import read_metrics
from pocketswap.distill.losses import DistillLoss, DlibChipWarp, masked_l1, pixel_weights
from pocketswap.distill.metrics import expression_error, expression_state, expression_state_error, head_pose
from pocketswap.distill.train import TrainingDivergedError, train
from pocketswap.faces import samples
from pocketswap.faces.align import align_face, hull_mask, similarity_transform, template_points, transform_points
from pocketswap.student.checkpoint import load_checkpoint

SIZE = 64
FACES = ("astronaut", "grace_hopper", "lfw_00", "lfw_01", "lfw_02", "lfw_03")
# A fast student and run: nano at 64 px, tiny batches, no image grids.
FAST = {
    "preset": "nano",
    "student": {"size": SIZE},
    "batch_size": 4,
    "lr": 3e-3,
    "warmup_steps": 2,
    "val_fraction": 0.34,
    "val_samples": 8,
    "shuffle_buffer": 8,
    "num_workers": 0,
    "image_every": 1000,
    "log_every": 1,
    "threads": 1,
}


# -- the tiny dataset ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def faces() -> dict[str, dict[str, np.ndarray]]:
    """name -> aligned 64 px crop, its landmarks (crop pixels) and dlib embedding."""
    from pocketswap.faces.analyzer import FaceAnalyzer
    from pocketswap.faces.dlib_resnet import DlibEncoder

    analyzer, encoder = FaceAnalyzer(detector="auto"), DlibEncoder()
    out = {}
    for name in FACES:
        image = samples.load(name)
        face = analyzer.detect_one(image)
        aligned = align_face(image, face.keypoints, SIZE)
        landmarks = face.landmarks.copy()
        landmarks[:, :2] = transform_points(face.landmarks, aligned.matrix)
        landmarks[:, 2] *= float(np.hypot(*aligned.matrix[0, :2]))
        chip = align_face(image, face.keypoints, 150, "dlib").crop
        out[name] = {"crop": aligned.crop, "landmarks": landmarks, "embedding": encoder.embed_chips(chip)[0]}
    return out


def write_dataset(root: Path, faces: dict[str, dict[str, np.ndarray]], pairs: int = 48, shard_size: int = 12) -> Path:
    """Pairs of real faces; the stand-in teacher pastes the identity crop inside the attribute's face hull."""
    rng = np.random.default_rng(0)
    names = list(faces)
    shards = []
    for s in range(0, pairs, shard_size):
        with ShardWriter(root / shard_name(len(shards))) as writer:
            for i in range(s, min(pairs, s + shard_size)):
                same = i % 8 == 0
                ident = names[int(rng.integers(len(names)))]
                attr = ident if same else names[int(rng.integers(len(names)))]
                a, b = faces[attr], faces[ident]
                mask = hull_mask(a["landmarks"], SIZE, 0.08)
                output = a["crop"] if same else (mask[..., None] * b["crop"] + (1 - mask[..., None]) * a["crop"])
                meta = {
                    "pair": "same" if same else "cross",
                    "identity": ident,
                    "identity_sources": [ident],
                    "attribute": attr,
                }
                writer.write(
                    Sample(
                        f"{i:06d}",
                        b["crop"],
                        a["crop"],
                        np.round(output).astype(np.uint8),
                        mask,
                        b["embedding"],
                        a["landmarks"],
                        meta,
                    )  # fmt: skip
                )
            shards.append(writer.close())
    manifest = DatasetManifest(
        size=SIZE, num_samples=pairs, shards=shards, teacher={"name": "paste"},
        embedding={"encoder": "dlib", "dim": 128}, seed=0, counts={"pairs": pairs}, identities=names, skipped=[],
    )  # fmt: skip
    write_dataset_manifest(root, manifest)
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory, faces) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pairs"), faces)


def fast_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, **changes})


# -- losses and metrics --------------------------------------------------------------------------
def test_ssim_of_identical_images_is_one_and_matches_numpy(faces) -> None:
    a, b = faces["astronaut"]["crop"], faces["grace_hopper"]["crop"]
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in (a, b))
    assert torch.allclose(ssim_map_torch(ta, ta), torch.ones(1, 1, SIZE, SIZE), atol=1e-5)
    assert ssim(a, a) == pytest.approx(1.0)
    assert float(ssim_map_torch(ta, tb).mean()) == pytest.approx(
        ssim(a, b), abs=1e-4
    )  # same window, borders and constants
    assert ssim(a, b) < 0.9
    assert psnr(a, a) == float("inf")
    noisy = np.clip(a.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    assert psnr(a, noisy, mask=(a.max(-1) < 245).astype(np.float32)) == pytest.approx(20 * np.log10(255 / 10), abs=1e-6)


def test_masked_l1_ignores_pixels_outside_the_weights() -> None:
    x, y = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    y[..., :4] = 5.0  # differs only in the left half
    left, right = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    left[..., :4], right[..., 4:] = 1.0, 1.0
    assert float(masked_l1(x, y, left)) == pytest.approx(5.0)
    assert float(masked_l1(x, y, right)) == pytest.approx(0.0)
    assert float(masked_l1(x, y, left + right)) == pytest.approx(2.5)


def test_paste_term_scores_what_the_pipeline_shows(faces) -> None:
    """The student's image blended over the attribute by its own mask: a soft mask ghosts the
    attribute's face back over a perfect image, and the paste term says so."""
    attribute, swapped = (
        torch.from_numpy(faces[n]["crop"]).permute(2, 0, 1)[None].float() / 127.5 - 1
        for n in ("astronaut", "grace_hopper")
    )
    face = torch.from_numpy(hull_mask(faces["astronaut"]["landmarks"], SIZE, 0.06) > 0.5)[None, None].float()
    teacher = face * swapped + (1 - face) * attribute
    batch = {"output": teacher, "attribute": attribute, "identity_image": swapped, "mask": face,
             "same": torch.zeros(1, dtype=torch.bool)}  # fmt: skip
    loss = DistillLoss(fast_config(w_l1=0, w_ssim=0, w_outside=0, w_id=0, w_mask=0, w_rec=0, w_paste=1.0), SIZE)
    assert float(loss(teacher, face, batch)["total"]) == pytest.approx(0.0, abs=1e-6)
    ghost = loss(teacher, face * 0.5, batch)
    half_way = masked_l1(0.5 * (teacher + attribute), teacher, pixel_weights(face, 3.0))
    assert float(ghost["paste"]) == pytest.approx(float(half_way), rel=1e-4) and float(ghost["paste"]) > 0.05
    assert float(ghost["l1"]) == 0.0  # the other terms are off


def test_dlib_chip_warp_matches_opencv(faces) -> None:
    crop = faces["astronaut"]["crop"]
    matrix = similarity_transform(template_points(SIZE, "arcface"), template_points(150, "dlib"))
    expected = cv2.warpAffine(
        crop.astype(np.float32), matrix, (150, 150), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    got = DlibChipWarp(SIZE)(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1)
    got = (got[0].permute(1, 2, 0).numpy() + 1) * 127.5
    assert np.abs(got - expected)[8:-8, 8:-8].max() < 0.05


def test_landmark_metrics(faces) -> None:
    lmk = faces["astronaut"]["landmarks"]
    center = np.array([SIZE / 2, SIZE / 2])
    angle = np.radians(10)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = lmk.copy()
    moved[:, :2] = (lmk[:, :2] - center) @ rot.T * 1.1 + center + 3  # a similarity: no expression change
    assert expression_error(moved, lmk) == pytest.approx(0.0, abs=1e-4)
    mouth_open = lmk.copy()
    mouth_open[[14, 17, 84, 87, 178, 317, 314, 402], 1] += 4.0  # lower lip down
    assert expression_error(mouth_open, lmk) > 0.002
    # the expression state: blind to a similarity and to the face's shape, not to an opening mouth
    assert expression_state_error(moved, lmk) == pytest.approx(0.0, abs=1e-6)
    wider_nose = lmk.copy()
    wider_nose[[48, 278, 64, 294], 0] += np.array([-3.0, 3.0, -3.0, 3.0])  # nose wings: shape, not expression
    assert expression_state_error(wider_nose, lmk) == 0.0 < expression_error(wider_nose, lmk)
    opening = expression_state(mouth_open)[0] - expression_state(lmk)[0]
    assert opening > 0.05 and expression_state_error(mouth_open, lmk) > 0.01
    yaw, pitch, roll = head_pose(lmk, SIZE)
    assert abs(yaw) < 30 and abs(pitch) < 30 and abs(roll) < 15
    assert head_pose(moved, SIZE)[2] - roll == pytest.approx(10.0, abs=1.0)


# -- config --------------------------------------------------------------------------------------
def test_bad_config_field_is_named(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="'lr'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="'batchsize'.*batch_size"):
        TrainConfig.from_dict({"batchsize": 8})
    with pytest.raises(ConfigError, match="'student.size'"):
        TrainConfig.from_dict({"student": {"size": 100}})
    with pytest.raises(ConfigError, match="'ema_decay'"):
        TrainConfig.load(overrides=parse_overrides(["ema_decay=1.5"]))
    with pytest.raises(ConfigError, match="'freeze'.*'encoders'"):
        TrainConfig.from_dict({"freeze": ["encoders"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: nano\nw_id: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'w_id'"):
        TrainConfig.load(bad)
    assert TrainConfig.load(overrides=parse_overrides(["lr=2e-3", "betas=[0.5, 0.9]"])).lr == 0.002

    from pocketswap.cli import main

    code = main(["distill", "train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--batch-size", "zero"])
    assert code == 2


# -- data ----------------------------------------------------------------------------------------
def test_split_holds_out_identities(dataset: Path) -> None:
    from pocketswap.core.dataset import read_dataset_manifest

    split = make_split(read_dataset_manifest(dataset).identities, 0.34, salt=0)
    assert len(split.val_names) == 2
    train_faces, val_identities = set(), set()
    for sample in iter_split(dataset, split, "train"):
        sources, attribute = pair_faces(sample.meta)
        train_faces.update([*sources, attribute])
    for sample in iter_split(dataset, split, "val"):
        val_identities.update(pair_faces(sample.meta)[0])
    assert train_faces and val_identities
    assert not train_faces & val_identities
    assert val_identities <= split.val_names


def test_split_keeps_every_photo_of_a_person_on_one_side() -> None:
    """Per-person folders (VGGFace2/CelebA layouts): held-out identity metrics must not leak."""
    faces = [f"{person}/{i:03d}.jpg" for person in ("ada", "bob", "cy", "dee", "eve", "fay") for i in range(4)]
    split = make_split(faces, 0.34, salt=1)
    held = {face.split("/")[0] for face in split.val_names}
    assert len(held) == 2 and len(split.val_names) == 8  # two whole people, all four photos each
    pinned = make_split(faces, 0.2, always=("eve",))
    assert {f for f in faces if f.startswith("eve/")} <= pinned.val_names
    single = make_split(["a.jpg", "b.jpg", "c.jpg"], 0.34)
    assert len(single.val_names) == 1  # loose files: one photo, one person


def test_stream_positions_resume_exactly(dataset: Path) -> None:
    split = make_split(list(FACES), 0.34)
    keys = lambda batch: batch["keys"]  # noqa: E731
    straight = iter(TrainStream(dataset, split, 4, seed=3, shuffle_buffer=8))
    expected = [keys(next(straight)) for _ in range(12)]  # several epochs of ~25 train pairs
    first = iter(TrainStream(dataset, split, 4, seed=3, shuffle_buffer=8))
    got, position = [], None
    for _ in range(7):
        batch = next(first)
        got.append(keys(batch))
        position = (batch["_epoch"], batch["_offset"])
    resumed = iter(TrainStream(dataset, split, 4, seed=3, shuffle_buffer=8, positions={0: position}))
    got += [keys(next(resumed)) for _ in range(5)]
    assert got == expected
    assert len({k for batch in expected for k in batch}) > 10


def test_stream_resumes_across_dataloader_workers(dataset: Path) -> None:
    """With 2 workers, saved per-part positions plus the batch count continue the round-robin order."""
    from torch.utils.data import DataLoader

    split = make_split(list(FACES), 0.34)

    def batches(positions=None, rotation=0):
        stream = TrainStream(
            dataset, split, 3, seed=1, shuffle_buffer=4, num_workers=2, positions=positions, rotation=rotation
        )
        return iter(DataLoader(stream, batch_size=None, num_workers=2))

    straight = batches()
    expected = [next(straight)["keys"] for _ in range(10)]
    first, positions, got = batches(), {}, []
    for _ in range(5):
        batch = next(first)
        got.append(batch["keys"])
        positions[batch["_part"]] = (batch["_epoch"], batch["_offset"])
    resumed = batches(positions, rotation=5)
    got += [next(resumed)["keys"] for _ in range(5)]
    assert got == expected


# -- training ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_reduces_the_loss(tmp_path: Path, dataset: Path) -> None:
    summary = train(
        fast_config(steps=40, checkpoint_every=20, image_every=20), dataset, tmp_path / "run", progress=False
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    losses = [r["l1"] + r["ssim"] for r in records]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert {"total", "l1", "ssim", "id", "mask", "rec", "outside", "lr", "samples_per_s", "grad_norm"} <= set(
        records[0]
    )
    val = read_metrics(tmp_path / "run" / "metrics.jsonl", "val")
    assert [r["step"] for r in val] == [20, 40] and val[-1]["loss"] < val[0]["loss"]
    run = tmp_path / "run"
    assert (run / "last").resolve() == (run / "checkpoints" / "step-000040").resolve()
    assert (run / "best" / "model.safetensors").is_file() and (run / "samples" / "step-000040.png").is_file()
    assert list((run / "tb").iterdir())
    model, config, extra = load_checkpoint(run / "best")
    assert config.size == SIZE and extra["step"] == summary.best_step == 40
    assert summary.samples_per_s > 0 and summary.stopped == "completed"


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path, dataset: Path) -> None:
    """2N steps straight == N steps, stop, resume N steps (weights, EMA; with a DataLoader worker)."""
    config = fast_config(steps=8, checkpoint_every=3, num_workers=1, keep_last=2, w_adv=0.05)
    straight = train(config, dataset, tmp_path / "straight", progress=False)
    first = train(config, dataset, tmp_path / "resumed", stop_after=4, progress=False)
    assert first.step == 4 and first.stopped == "stop_after"
    # Stopped while copying best/: the temp copy is removed and best/ comes back on resume.
    shutil.rmtree(tmp_path / "resumed" / "best")
    (tmp_path / "resumed" / ".best.0123abcd.tmp").mkdir()
    from pocketswap.cli import main

    # The CLI resumes with the run's own config.yaml and dataset.
    assert main(["distill", "train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    second = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert second["step"] == 8
    assert (tmp_path / "resumed" / "best" / "model.safetensors").is_file()
    assert not list((tmp_path / "resumed").glob(".best.*.tmp"))
    assert second["weights_sha256"] == straight.weights_sha256
    a = load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from pocketswap.distill.state import load_state

    sa = load_state(tmp_path / "straight" / "checkpoints" / "step-000008")
    sb = load_state(tmp_path / "resumed" / "checkpoints" / "step-000008")
    assert all(torch.equal(sa["trainee"][k], sb["trainee"][k]) for k in sa["trainee"])
    assert all(torch.equal(sa["disc"][k], sb["disc"][k]) for k in sa["disc"])
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-000006", "step-000008"]
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl", "train")]
    assert steps == list(range(1, 9))  # no duplicates from the interrupted part

    # Resuming the completed run says so and rewrites nothing (summary.json keeps its figures).
    before = (tmp_path / "resumed" / "summary.json").read_bytes()
    assert main(["distill", "train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    assert (tmp_path / "resumed" / "summary.json").read_bytes() == before
    assert second["final_loss"] is not None


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pocketswap.distill import losses

    original, calls = losses.DistillLoss.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(losses.DistillLoss, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"step 5 .*Last good checkpoint: .*step-000004"):
        train(fast_config(steps=10, checkpoint_every=2, val_samples=0), dataset, run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    model, _, extra = load_checkpoint(run / "last")
    assert extra["step"] == 4 and all(
        torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()
    )
    assert read_metrics(run / "metrics.jsonl", "event")[-1]["event"] == "diverged"

    monkeypatch.setattr(losses.DistillLoss, "forward", original)
    with pytest.raises(TrainingDivergedError, match="non-finite"):  # the real thing: an absurd learning rate
        train(
            fast_config(steps=30, lr=1e9, grad_clip=0.0, warmup_steps=0, val_samples=0),
            dataset,
            tmp_path / "lr",
            progress=False,
        )


def test_feature_and_adversarial_terms(tmp_path: Path, dataset: Path) -> None:
    module = tmp_path / "toy_teacher.py"
    module.write_text(
        "import torch\n"
        "class Toy(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 6, 3, 2, 1)\n"
        "    def forward(self, image, embedding):\n"
        "        return self.conv(image)\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return Toy()\n"
    )
    config = fast_config(
        steps=3,
        w_feat=0.5,
        feature_teacher=f"{module}:make",
        feature_layers=["conv=encoder.1"],
        w_adv=0.1,
        val_samples=0,
    )
    train(config, dataset, tmp_path / "run", progress=False)
    last = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")[-1]
    assert last["feat"] > 0 and last["adv"] != 0 and last["d_loss"] > 0
    with pytest.raises(ConfigError, match="'feature_layers'.*no submodule 'nope'"):
        train(config.replace(feature_layers=["conv=nope"]), dataset, tmp_path / "bad", progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**FAST, "steps": 4, "checkpoint_every": 4}.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pocketswap.cli", "distill", "train", "--data", str(dataset), "--out", str(run), "--no-progress",
               *overrides]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert len(summary["rank_weights_sha256"]) == 2 and len(set(summary["rank_weights_sha256"])) == 1
    state = json.loads((run / "checkpoints" / "step-000004" / "train_state.json").read_text())
    assert len(state["__dict__"]["ranks"]) == 2


# -- evaluation ----------------------------------------------------------------------------------
def test_eval_reports_every_metric_for_student_and_teacher(tmp_path: Path, dataset: Path, capsys) -> None:
    from pocketswap.cli import main

    run = tmp_path / "run"
    train(fast_config(steps=2, checkpoint_every=2), dataset, run, progress=False)
    out = tmp_path / "eval.json"
    assert main(["distill", "eval", str(run), "--data", str(dataset), "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["num_samples"] > 0 and report["num_identities"] == 2
    for column in COLUMNS:
        assert set(report["metrics"][column]) == set(METRICS)
    student, teacher, attribute = (report["metrics"][c] for c in COLUMNS)
    assert all(student[m] is not None for m in ("psnr_face", "ssim_face", "id_cosine", "id_retrieval_top1"))
    assert teacher["psnr_face"] is None and attribute["psnr_face"] is not None
    assert 0.0 <= student["mask_coverage"] <= 1.0 and teacher["mask_coverage"] > 0.95  # the teacher's own core
    assert attribute["mask_coverage"] is None
    assert teacher["id_cosine"] > attribute["id_cosine"]  # the stand-in teacher does paste the identity in
    assert teacher["landmarks_detected"] > 0 and teacher["expression_error"] is not None
    assert "psnr_face" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_between_checkpoints_resumes_exactly(tmp_path: Path, dataset: Path) -> None:
    """Ctrl-C lands mid-step somewhere between checkpoints: the run stops at the step boundary with a
    checkpoint, and `--resume` ends with the weights of an uninterrupted run (README's promise)."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({**FAST, "steps": 40, "checkpoint_every": 1000}))

    def command(out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pocketswap.cli", "distill", "train", "--data", str(dataset), "--out",
                str(tmp_path / out), "--config", str(config), "--no-progress", *extra]  # fmt: skip

    assert subprocess.run(command("straight"), capture_output=True, timeout=600).returncode == 0
    run = subprocess.Popen(command("stopped"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(read_metrics(metrics, "train")) >= 7):
        assert time.monotonic() < deadline and run.poll() is None, "training did not start"
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 130, err.decode()[-2000:]
    stopped_at = max(r["step"] for r in read_metrics(metrics, "train"))
    assert 7 <= stopped_at < 40 and b"Traceback" not in err
    assert subprocess.run(command("stopped", "--resume"), capture_output=True, timeout=600).returncode == 0
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert resumed["step"] == 40 and resumed["weights_sha256"] == straight["weights_sha256"], stopped_at


def test_two_trainings_into_one_folder_are_refused(tmp_path: Path, dataset: Path, capsys) -> None:
    from pocketswap.cli import main
    from pocketswap.core.files import exclusive_folder

    out = tmp_path / "run"
    out.mkdir()
    with exclusive_folder(out):  # another `distill train --out run` holds the folder
        code = main(["distill", "train", "--data", str(dataset), "--out", str(out), "steps=1", "--no-progress"])
    assert code == 2 and "another run is writing here now" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 2e-3\nsteps: 10\nw_id: 1e-1\n")
    config = TrainConfig.load(path)
    assert config.lr == 0.002 and config.w_id == 0.1 and config.steps == 10
