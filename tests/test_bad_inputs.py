"""The bad-input matrix: every subcommand against missing, empty, wrong-type and truncated inputs,
corrupt artifacts, out-of-range numbers and unwritable outputs. Each case must end with one
`error:` line, exit status 2, no traceback and no temporary file left behind."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest
import torch

from pocketswap.cli import main
from pocketswap.core.errors import ConfigError, OutputError
from pocketswap.core.files import atomic_write_bytes, check_output
from pocketswap.core.imageio import write_image


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of the CLI in this process; argparse errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, err: str, root) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err, err
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], "temporary files left behind"


@pytest.fixture
def bad(tmp_path):
    """Bad inputs by kind: a missing file, an empty one, text named .png, a truncated PNG."""
    write_image(tmp_path / "good.png", np.full((64, 64, 3), 120, np.uint8))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    (tmp_path / "bad.tflite").write_bytes(b"garbage" * 100)
    (tmp_path / "baseline.json").write_text("{not json")
    torch.onnx.export(
        torch.nn.Conv2d(3, 4, 1), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "foreign.onnx"), dynamo=False
    )
    return tmp_path


IMAGE_KINDS = ("missing", "empty", "text", "truncated")
IMAGE_COMMANDS = (
    "faces detect {img}",
    "faces align {img} --out {tmp}/o.png",
    "faces embed {img} --out {tmp}/o.npy",
    "faces compare {img} sample:astronaut",
    "distill personalize {tmp}/folder --identity {img} --out {tmp}/p",
    "export {tmp}/folder --identity {img} --format onnx --out {tmp}/e",
    "bench report {img} --out {tmp}/r.html",
)
OTHER_COMMANDS = (
    "teacher generate --faces {tmp}/folder --out {tmp}/d --pairs 4",
    "teacher generate --faces {tmp}/good.png --out {tmp}/d --pairs 4",
    "teacher preview {tmp}/folder --out {tmp}/p.png",
    "distill train --data {tmp}/folder --out {tmp}/r --steps 1",
    "distill eval {tmp}/folder",
    "export patch {tmp}/bad.tflite --identity sample:astronaut --checkpoint {tmp}/folder --out {tmp}/x.tflite",
    "bench latency {tmp}/bad.onnx",
    "bench latency {tmp}/bad.tflite",
    "bench gate --baseline {tmp}/baseline.json",
    "demo --model {tmp}/bad.onnx --source {tmp}/good.png --headless",
    "demo --model {tmp}/foreign.onnx --source {tmp}/good.png --headless",
    "demo --model {tmp}/bad.tflite --source {tmp}/folder --headless",
    "student summary --preset bogus",
    "bench check-measures {tmp}/folder",
    "bench quality {tmp}/folder --people {tmp}/folder --out {tmp}/q",
    "bench quality {tmp}/bad.onnx --people {tmp}/folder --out {tmp}/q",
    "distill train --data {tmp}/folder --out {tmp}/r --config {tmp}/folder",
    "teacher generate --out {tmp}/d --config {tmp}/folder",
    "teacher generate --out {tmp}/d --config {tmp}/good.png",
)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_bad_images_everywhere(bad, capsys, command, kind):
    code, err = run_cli(command.format(img=bad / f"{kind}.png", tmp=bad).split(), capsys)
    assert_clean_failure(code, err, bad)


@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_bad_folders_datasets_and_artifacts(bad, capsys, command):
    code, err = run_cli(command.format(tmp=bad).split(), capsys)
    assert_clean_failure(code, err, bad)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["faces", "align", "sample:astronaut", "--out", "{tmp}/crop.xyz"], "unknown extension '.xyz'"),
        (["faces", "embed", "sample:astronaut", "--out", "{tmp}/embedding"], "use one of .npy"),
        (["faces", "align", "sample:astronaut", "--out", "{file}/crop.png"], "is a file, not a folder"),
        (["faces", "align", "sample:astronaut", "--out", "{tmp}/folder.png"], "is a folder"),
        (["faces", "align", "sample:astronaut", "--out", "{tmp}/c.png", "--size", "100000"], r"in \[16, 1024\]"),
        (["teacher", "generate", "--out", "{file}"], "is a file, not a folder"),
        (["bench", "latency", "preset:nano:onnx", "--runs", "0"], ">= 1"),
        (["bench", "latency", "preset:nano:onnx", "--json", "{tmp}/r.txt"], "use one of .json"),
        (["distill", "train", "--out", "{file}/run"], "is a file, not a folder"),
        (["demo", "--model", "m.onnx", "--threads", "0"], ">= 1"),
    ],
)
def test_bad_output_paths_and_numbers_are_one_line(tmp_path, a_file, capsys, argv, message):
    code, err = run_cli([a.format(tmp=tmp_path, file=a_file) for a in argv], capsys)
    assert_clean_failure(code, err, tmp_path)
    assert re.search(message, err), err


def test_demo_output_that_does_not_fit_the_source_is_refused_before_loading(tmp_path, capsys):
    code = main(["demo", "--model", str(tmp_path / "missing.onnx"), "--source", str(tmp_path / "still.png"),
                 "--output", str(tmp_path / "out.mp4"), "--headless"])  # fmt: skip
    assert code == 2 and "unknown extension '.mp4'" in capsys.readouterr().err


def test_failed_writes_leave_no_temp_files(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_bytes(folder, b"data")
    with pytest.raises(OutputError, match="unknown extension"):
        write_image(tmp_path / "image.xyz", np.zeros((8, 8, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert write_image(tmp_path / "deep" / "new" / "image.png", np.zeros((8, 8, 3), np.uint8)).is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_named(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(OutputError, match="permission denied"):
        check_output(folder / "x.png")


@pytest.mark.parametrize(("rank", "world"), [("x", "2"), ("2", "2"), ("0", "0")])
def test_bad_torchrun_environment_is_one_clear_error(monkeypatch, rank, world):
    from pocketswap.core.config import distributed_rank

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match="RANK"):
        distributed_rank()


def test_config_flags_are_typed_by_their_field(tmp_path, capsys):
    import argparse

    from pocketswap.core.cli_args import add_config_flags, config_flags
    from pocketswap.teacher.config import GenerateConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, GenerateConfig, skip=("teacher_config", "augment"))
    args = parser.parse_args(["--faces", "2024", "--pairs", "12", "--same-identity-share", "2e-1"])
    assert config_flags(args, GenerateConfig) == {"faces": "2024", "pairs": 12, "same_identity_share": 0.2}
    assert main(["teacher", "generate", "--out", str(tmp_path / "d"), "--pairs", "many"]) == 2
    assert "'pairs'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["teacher", "generate", "--out", str(tmp_path / "d"), "--detector", "big"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


# -- the second round: names, pipes, lying manifests, formats, same-file outputs, full disks ---------
@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    from pocketswap.student import StudentNet, get_preset
    from pocketswap.student.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("nano") / "nano", StudentNet(get_preset("nano")).eval())


def _encoded(kind: str, frames: int = 1, side: int = 64) -> bytes:
    import io

    from PIL import Image

    images = [Image.fromarray(np.full((side, side, 3), 40 * i + 20, np.uint8)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=kind, save_all=frames > 1, append_images=images[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["faces", "detect", "{tmp}/" + "a" * 300 + ".png"], "File name too long"),
        (["faces", "align", "sample:astronaut", "--out", "{tmp}/" + "b" * 300 + ".png"], "is over 255 bytes"),
        (["faces", "detect", "{tmp}/pipe.png"], "not a regular file"),
        (["faces", "detect", "{tmp}/anim.gif"], "GIF images are not supported"),
        (["faces", "detect", "{tmp}/anim.webp"], "animated or multi-page"),
        (["faces", "detect", "{tmp}/gif_named.png"], "GIF images are not supported"),
        (["faces", "align", "{tmp}/still.png", "--out", "{tmp}/still.png"], "is the input file"),
        (["demo", "--model", "m.onnx", "--max-frames", "-1"], ">= 1"),
        (["demo", "--model", "m.onnx", "--detect-every", "0"], r"'detect_every' must be in \[1, 300\]"),
        (
            [
                "demo",
                "--model",
                "{ckpt}",
                "--identity",
                "sample:grace_hopper",
                "--source",
                "{tmp}/pipe.mp4",
                "--headless",
            ],
            "not a regular file",
        ),
        (
            ["demo", "--model", "{ckpt}", "--source", "{tmp}/c.mp4", "--out", "{tmp}/c.mp4", "--headless"],
            "is the input file",
        ),
    ],
)
def test_names_pipes_formats_and_same_file_outputs_are_one_line(tmp_path, capsys, nano_checkpoint, argv, message):
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "anim.gif").write_bytes(_encoded("GIF", 3))
    (tmp_path / "anim.webp").write_bytes(_encoded("WEBP", 3))
    (tmp_path / "gif_named.png").write_bytes(_encoded("GIF"))
    still = write_image(tmp_path / "still.png", np.full((64, 64, 3), 90, np.uint8))
    (tmp_path / "c.mp4").write_bytes(b"original video bytes")
    code, err = run_cli([a.format(tmp=tmp_path, ckpt=nano_checkpoint) for a in argv], capsys)
    assert_clean_failure(code, err, tmp_path)
    assert re.search(message, err), err
    assert (
        still.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "c.mp4").read_bytes() == b"original video bytes"
    )


def test_exif_orientation_is_applied_like_a_viewer(tmp_path):
    """A phone portrait stored sideways (EXIF orientation 2-8) is read upright, as PIL's exif_transpose shows it."""
    from PIL import Image, ImageOps

    from pocketswap.core.imageio import read_image

    pixels = np.random.default_rng(0).integers(0, 255, (40, 64, 3), np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"  # PNG keeps the pixels exact; eXIf carries the orientation
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(path, exif=exif)
        want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(read_image(path), want), orientation


def test_demo_takes_a_sample_and_writes_a_still(tmp_path, capsys, nano_checkpoint):
    out = tmp_path / "x.png"
    code = main(["demo", "--model", str(nano_checkpoint), "--identity", "sample:grace_hopper",
                 "--source", "sample:astronaut", "--output", str(out), "--headless"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert out.is_file() and cv2.imread(str(out)).shape[:2] == samples_shape("astronaut")


def samples_shape(name: str) -> tuple[int, int]:
    from pocketswap.faces import samples

    return samples.load(name).shape[:2]


def test_embed_creates_its_folder(tmp_path, capsys):
    out = tmp_path / "new_folder" / "e.npy"
    assert main(["faces", "embed", "sample:astronaut", "--out", str(out)]) == 0, capsys.readouterr().err
    assert np.load(out).shape == (128,)


def _lying(artifact, tmp_path, change) -> str:
    """A copy of ``artifact`` whose manifest ``change`` edits (in place) or replaces (returning the file's bytes)."""
    import json
    import shutil

    target = tmp_path / f"lie_{len(list(tmp_path.glob('lie_*')))}.onnx"
    shutil.copy(artifact, target)
    manifest = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    raw = change(manifest)
    target.with_name(target.name + ".json").write_bytes(
        raw if isinstance(raw, bytes) else json.dumps(manifest).encode()
    )
    return str(target)


def _with(key: str, raw: bytes):
    """A change that writes the manifest with ``"key": raw`` (bytes no JSON writer would produce) added at its end."""
    import json

    return lambda m: json.dumps(m).encode()[:-1] + b', "' + key.encode() + b'": ' + raw + b"}"


@pytest.fixture(scope="module")
def warped_artifact(tmp_path_factory):
    """A baked ONNX export of a random-weight student that reads the warped identity (its manifest has a texture)."""
    from pocketswap.student import StudentNet, get_preset
    from pocketswap.student.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("warped")
    torch.manual_seed(0)
    net = StudentNet(get_preset("nano", size=64, identity_encoder=True, identity_warp=True)).eval()
    checkpoint = save_checkpoint(root / "ckpt", net)
    assert main(["export", str(checkpoint), "--identity", "sample:grace_hopper", "--format", "onnx",
                 "--out", str(root / "out")]) == 0  # fmt: skip
    return next((root / "out").glob("*.onnx"))


def _texture_bomb() -> str:
    import base64

    ok, png = cv2.imencode(".png", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return base64.b64encode(png.tobytes()).decode()


LIES = {
    "crop size": (lambda m: m.update(crop_size=96), "'crop_size' is 96"),
    "crop size text": (lambda m: m.update(crop_size="64"), "'crop_size' must be a whole number or null, got '64'"),
    "10 landmarks": (
        lambda m: m["identity_texture"].update(landmarks=m["identity_texture"]["landmarks"][:10]),
        "468 finite",
    ),
    "NaN landmark": (lambda m: m["identity_texture"]["landmarks"][5].__setitem__(0, float("nan")), "468 finite"),
    "texture bomb": (lambda m: m["identity_texture"].update(png_base64=_texture_bomb()), "MP limit"),
    "texture size": (lambda m: m["identity_texture"].update(size=32), "identity_texture"),
    "huge scale": (lambda m: m["swap_spec"]["normalization"].update(scale=1e308), "'normalization.scale' must be in"),
    "huge offset": (lambda m: m["swap_spec"]["normalization"].update(offset=-1e30), "'normalization.offset' must be"),
    "BGR channels": (lambda m: m["swap_spec"]["normalization"].update(channels="BGRA"), "must be RGB"),
}
# Manifests that no reader may take (#37 item 5): broken JSON and fields of the wrong type. Every reader (demo, the
# app's startup, bench latency/pipeline/report) runs the one check, so each is one line naming the field.
BROKEN = {
    "not UTF-8": (_with("note", b'"caf\xe9"'), "not UTF-8 text (byte 0xe9"),
    "deep brackets": (_with("extra2", b"[" * 100_000 + b"]" * 100_000), "nested deeper than 64 levels"),
    "deep objects": (_with("extra2", b'{"a": ' * 100 + b"1" + b"}" * 100), "nested deeper than 64 levels"),
    "5000-digit integer": (_with("file_size_bytes", b"9" * 5000), "a number of 5000 digits"),
    "cut short": (lambda m: __import__("json").dumps(m).encode()[:-40], "not valid JSON"),
    "inputs text": (lambda m: m.update(inputs="abc"), "field 'inputs' must be a list, got 'abc'"),
    "inputs number": (lambda m: m.update(inputs=5), "field 'inputs' must be a list, got 5"),
    "inputs [null]": (lambda m: m.update(inputs=[None]), "field 'inputs[0]' must be an object, got null"),
    "input extra key": (lambda m: m["inputs"][0].update(zoom=2), "field 'inputs[0].zoom' is not a field here"),
    "input shape text": (lambda m: m["inputs"][0].update(shape="1x3"), "field 'inputs[0].shape' must be a list"),
    "outputs missing": (lambda m: m.pop("outputs"), "field 'outputs' is missing"),
    "extra list": (lambda m: m.update(extra=[1, 2]), "field 'extra' must be an object, got a list"),
    "swap_spec text": (lambda m: m.update(swap_spec="abc"), "field 'swap_spec' must be an object or null, got 'abc'"),
    "template number": (lambda m: m.update(template=5), "field 'template' must be a string or null, got 5"),
    "crop size true": (lambda m: m.update(crop_size=True), "field 'crop_size' must be a whole number or null, got true"),
    "parity list": (lambda m: m.update(parity=[1]), "field 'parity' must be an object, got a list"),
    "parity max_abs text": (lambda m: m["parity"].update(max_abs="x"), "field 'parity.max_abs' must be a number, got 'x'"),
    "parity cases": (lambda m: m["parity"].update(cases=[5]), "field 'parity.cases[0]' must be an object, got 5"),
    "delegation text": (lambda m: m.update(delegation="x"), "field 'delegation' must be an object or null, got 'x'"),
    "source text": (lambda m: m.update(source="abc"), "field 'source' must be an object, got 'abc'"),
    "ops counts": (lambda m: m.update(ops={"Conv": "33"}), "field 'ops.Conv' must be a whole number, got '33'"),
    "patch text": (lambda m: m.update(patch="abc"), "field 'patch' must be an object or null, got 'abc'"),
    "kind number": (lambda m: m.update(kind=5), "field 'kind' must be a string, got 5"),
}  # fmt: skip
LIES |= BROKEN


@pytest.mark.parametrize("command", ("demo --model {m} --source sample:astronaut --headless", "bench pipeline {m}"))
@pytest.mark.parametrize("lie", sorted(LIES))
def test_manifests_that_lie_are_one_line_naming_the_field(tmp_path, capsys, warped_artifact, command, lie):
    import psutil

    change, message = LIES[lie]
    before = psutil.Process().memory_info().rss
    code, err = run_cli(command.format(m=_lying(warped_artifact, tmp_path, change)).split(), capsys)
    assert_clean_failure(code, err, tmp_path)
    assert message in err, err
    assert psutil.Process().memory_info().rss - before < 500 * 1024 * 1024, "the texture bomb was decoded"


@pytest.mark.parametrize("command", ("bench latency {m} --runs 1", "bench report {m}.json --out {tmp}/r.html"))
@pytest.mark.parametrize("lie", sorted(BROKEN))
def test_broken_manifests_are_one_line_in_bench_latency_and_report(tmp_path, capsys, warped_artifact, command, lie):
    change, message = BROKEN[lie]
    code, err = run_cli(command.format(m=_lying(warped_artifact, tmp_path, change), tmp=tmp_path).split(), capsys)
    assert_clean_failure(code, err, tmp_path)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("lie", sorted(BROKEN))
def test_the_app_refuses_at_startup_what_demo_refuses(tmp_path, warped_artifact, lie):
    """The app's startup runs the same manifest check as `demo` (it used to crash on parity, delegation and source
    lies that `demo` took): one PocketswapError naming the field."""
    from pathlib import Path

    from pocketswap.core.errors import PocketswapError
    from pocketswap.demo.web import AppOptions, create_app

    change, message = BROKEN[lie]
    model = Path(_lying(warped_artifact, tmp_path, change))
    with pytest.raises(PocketswapError) as info:
        create_app(AppOptions(model=model, work_dir=tmp_path / "work"))
    assert message in str(info.value) and "\n" not in str(info.value), info.value


def _checkpoint_with(tmp_path, source, change) -> str:
    """A copy of the checkpoint ``source`` whose config.json ``change`` edits or replaces (returning bytes)."""
    import json
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    raw = change(config)
    (target / "config.json").write_bytes(raw if isinstance(raw, bytes) else json.dumps(config).encode())
    return str(target)


CONFIG_LIES = {
    "not UTF-8": (_with("note", b'"caf\xe9"'), "not UTF-8 text"),
    "deep brackets": (_with("more", b"[" * 100_000 + b"]" * 100_000), "nested deeper than 64 levels"),
    "deep objects": (_with("more", b'{"a": ' * 100 + b"1" + b"}" * 100), "nested deeper than 64 levels"),
    "5000-digit integer": (_with("crop_size", b"9" * 5000), "a number of 5000 digits"),
    "student text": (lambda c: c.update(student="abc"), "field 'student' must be an object, got 'abc'"),
    "extra list": (lambda c: c.update(extra=[1, 2]), "field 'extra' must be an object, got a list"),
    "model number": (lambda c: c.update(model=5), "field 'model' must be a string, got 5"),
    "save_id missing": (lambda c: c.pop("save_id"), "field 'save_id' is missing"),
    "template number": (lambda c: c.update(template=5), "field 'template' must be a string, got 5"),
}  # fmt: skip


@pytest.mark.parametrize(
    "command",
    (
        "demo --model {c} --identity sample:grace_hopper --source sample:astronaut --headless",
        "export {c} --identity sample:grace_hopper --format onnx --out {tmp}/e",
        "distill eval {c} --data {tmp}/nowhere",
    ),
)
@pytest.mark.parametrize("lie", sorted(CONFIG_LIES))
def test_a_broken_checkpoint_config_is_one_line(tmp_path, capsys, nano_checkpoint, command, lie):
    change, message = CONFIG_LIES[lie]
    argv = command.format(c=_checkpoint_with(tmp_path, nano_checkpoint, change), tmp=tmp_path).split()
    code, err = run_cli(argv, capsys)
    assert_clean_failure(code, err, tmp_path)
    assert message in err and "config.json" in err, err


def test_the_app_refuses_a_broken_checkpoint_config_at_startup(tmp_path, nano_checkpoint):
    from pathlib import Path

    from pocketswap.core.errors import PocketswapError
    from pocketswap.demo.web import AppOptions, create_app

    model = Path(_checkpoint_with(tmp_path, nano_checkpoint, CONFIG_LIES["deep objects"][0]))
    with pytest.raises(PocketswapError, match="checkpoint config .*config.json: nested deeper than 64 levels"):
        create_app(AppOptions(model=model, identity=Path("sample:grace_hopper"), work_dir=tmp_path / "work"))


TRAIN_LOG = (
    b"".join(
        b'{"step": %d, "kind": "train", "total": 0.%d, "l1": 0.1, "samples_per_s": 50.0}\n' % (s, 9 - s)
        for s in range(1, 6)
    )
    + b'{"step": 5, "kind": "val", "loss": 0.2, "psnr_face": 21.5}\n'
)


def test_bench_report_skips_a_training_log_line_cut_by_a_kill_and_says_so(tmp_path, capsys, caplog):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(TRAIN_LOG + b'{"step": 6, "kind": "tra')
    with caplog.at_level("WARNING"):
        code, err = run_cli(["bench", "report", str(log), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 0, err
    assert "skipped its last line 7, cut off" in caplog.text, caplog.text
    assert "Training curves from metrics.jsonl: 5 steps" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (TRAIN_LOG.replace(b'{"step": 3, "kind": "train"', b'{"step": 3, "ki'), "line 3: not valid JSON"),
        (TRAIN_LOG.replace(b'"step": 2,', b'"step": "two",'), "line 2: field 'step' must be a whole number"),
        (TRAIN_LOG + b"[" * 100_000 + b"\n", "line 7: nested deeper than 64 levels"),
        (b"\xff\xfe" + TRAIN_LOG, "line 1: not UTF-8 text"),
    ],
)
def test_bench_report_refuses_a_training_log_corrupt_in_the_middle(tmp_path, capsys, content, message):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(content)
    code, err = run_cli(["bench", "report", str(log), "--out", str(tmp_path / "r.html")], capsys)
    assert_clean_failure(code, err, tmp_path)
    assert f"training log {log} {message}" in err, err


BROKEN_JSON = {
    "not UTF-8": (b'{"threads": 1, "note": "caf\xe9"}', "not UTF-8 text"),
    "deep brackets": (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    "deep objects": (b'{"a": ' * 100 + b"1" + b"}" * 100, "nested deeper than 64 levels"),
    "5000-digit integer": (b'{"threads": ' + b"9" * 5000 + b"}", "a number of 5000 digits"),
}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        *BROKEN_JSON.values(),
        (b'{"targets": [1], "threads": 1}', "field 'targets' must be an object, got a list"),
        (b'{"targets": {"t": {"frozen": 5, "sha256": "x"}}, "threads": 1}', "field 'targets.t.frozen' must be a string"),
        (b'{"targets": {}, "threads": "1"}', "field 'threads' must be a whole number, got '1'"),
        (b'{"targets": {}}', "field 'threads' is missing"),
    ],
)  # fmt: skip
def test_a_broken_latency_baseline_is_one_line(tmp_path, capsys, content, message):
    baseline = tmp_path / "baseline.json"
    baseline.write_bytes(content)
    code, err = run_cli(["bench", "gate", "--baseline", str(baseline)], capsys)
    assert_clean_failure(code, err, tmp_path)
    assert f"latency baseline {baseline}: " in err and message in err, err


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset") / "d"
    assert main(["teacher", "generate", "--faces", "samples", "--out", str(root), "--pairs", "4", "--size", "64",
                 "--workers", "1"]) == 0  # fmt: skip
    return root


@pytest.mark.parametrize(
    ("content", "message"),
    [
        *BROKEN_JSON.values(),
        (lambda m: m.update(shards=[None]), "field 'shards[0]' must be an object, got null"),
        (lambda m: m["shards"][0].update(samples="4"), "field 'shards[0].samples' must be a whole number, got '4'"),
        (lambda m: m.update(embedding={"dim": "128"}), "field 'embedding.dim' must be a whole number, got '128'"),
        (lambda m: m.update(identities=[1]), "field 'identities[0]' must be a string, got 1"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "command", ("teacher preview {d} --out {tmp}/p.png", "distill train --data {d} --out {tmp}/run --steps 1")
)
def test_a_broken_dataset_manifest_is_one_line(tmp_path, capsys, tiny_dataset, command, content, message):
    import json
    import shutil

    dataset = tmp_path / "d"
    shutil.copytree(tiny_dataset, dataset)
    if callable(content):
        manifest = json.loads((dataset / "manifest.json").read_text())
        content(manifest)
        content = json.dumps(manifest).encode()
    (dataset / "manifest.json").write_bytes(content)
    code, err = run_cli(command.format(d=dataset, tmp=tmp_path).split(), capsys)
    assert_clean_failure(code, err, tmp_path)
    assert "manifest.json" in err and message in err, err


def _limited(argv: list[str], max_bytes: int, cwd) -> tuple[int, str]:
    """The CLI in a child process whose files cannot grow past ``max_bytes`` (EFBIG: a full disk, as
    the writer sees it)."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    run = subprocess.run([sys.executable, "-m", "pocketswap.cli", *argv], capture_output=True, text=True,
                         preexec_fn=limit, cwd=cwd, timeout=600)  # fmt: skip
    return run.returncode, run.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["faces", "align", "sample:astronaut", "--out", "{tmp}/crop.png", "--size", "512"],
        [
            "demo",
            "--model",
            "{ckpt}",
            "--identity",
            "sample:grace_hopper",
            "--source",
            "sample:astronaut",
            "--output",
            "{tmp}/swap.png",
            "--headless",
        ],
        ["export", "{ckpt}", "--identity", "sample:grace_hopper", "--format", "onnx", "--out", "{tmp}/e"],
    ],
)
def test_a_full_disk_is_one_line_and_leaves_no_temp_files(tmp_path, nano_checkpoint, argv):
    code, err = _limited([a.format(tmp=tmp_path, ckpt=nano_checkpoint) for a in argv], 20_000, tmp_path)
    assert_clean_failure(code, err, tmp_path)
    assert "File too large" in err or "cannot write" in err, err


@pytest.mark.slow
def test_a_face_file_name_that_is_not_utf8_generates_and_trains(tmp_path, capsys):
    from pocketswap.faces import samples

    faces = tmp_path / "faces"
    for name in ("astronaut", "grace_hopper", "lfw_01", "lfw_02", "lfw_03"):
        write_image(faces / f"{name}.png", samples.load(name))
    write_image(faces / "lfw_00.png", samples.load("lfw_00"))
    os.rename(os.fsencode(faces / "lfw_00.png"), os.fsencode(faces) + b"/caf\xe9.png")  # a Latin-1 name
    assert main(["teacher", "generate", "--faces", str(faces), "--out", str(tmp_path / "d"), "--pairs", "12",
                 "--workers", "1", "--size", "64"]) == 0, capsys.readouterr().err  # fmt: skip
    assert f"next: pocketswap distill train --data {tmp_path / 'd'}" in capsys.readouterr().out
    import json

    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text(encoding="utf-8"))
    assert "caf\ufffd.png" in json.dumps(manifest, ensure_ascii=False)  # recorded printable, still UTF-8
    code = main(["distill", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--steps", "1",
                 "--batch-size", "4", "--num-workers", "0", "--no-progress", "student.size=64", "val_fraction=0.34"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.rstrip().splitlines()[-1].startswith(f"next: pocketswap distill eval {tmp_path / 'r'}")


@pytest.mark.slow
def test_ctrl_c_during_an_export_keeps_the_artifacts_already_checked(tmp_path, nano_checkpoint):
    """Interrupted while TFLite converts, the ONNX artifact that already passed parity stays in --out."""
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "export.log"
    with log.open("w") as handle:
        run = subprocess.Popen([sys.executable, "-m", "pocketswap.cli", "export", str(nano_checkpoint), "--identity",
                                "sample:grace_hopper", "--format", "onnx,tflite", "--out", str(tmp_path / "out")],
                               stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 300
        while "onnx done" not in log.read_text():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=300) == 130
    text = log.read_text()
    assert "finished work is kept" in text and "Traceback" not in text, text[-2000:]
    kept = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert kept == ["nano_baked_fp32.onnx", "nano_baked_fp32.onnx.json"], kept


@pytest.mark.parametrize("kind", ["empty.npy", "complex.npy", "huge.npy", "two.npz", "text.npy"])
def test_bad_identity_embeddings_are_refused_in_one_line(tmp_path, kind):
    """An empty .npy, complex or absurdly large values, an .npz with two arrays, text named .npy: one line each."""
    from pocketswap.core.errors import ImageReadError
    from pocketswap.faces.identity import read_identity

    path = tmp_path / kind
    if kind == "empty.npy":
        path.write_bytes(b"")
    elif kind == "complex.npy":
        np.save(path, np.ones(128, np.complex64))
    elif kind == "huge.npy":
        np.save(path, np.full(128, 1e38, np.float32))
    elif kind == "two.npz":
        np.savez(path, a=np.ones(128, np.float32), b=np.ones(128, np.float32))
    else:
        path.write_text("0.1 0.2 0.3")
    with pytest.raises(ImageReadError, match=f"identity embedding {re.escape(str(path))}: unreadable") as info:
        read_identity(path, embed_dim=128)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b'{"metrics": ', b"\xff\xfe", b"[1, 2]", b'{"metrics": {"universal": 5}}', b"[" * 100_000,
     b'{"metrics": {}, "num_samples": ' + b"9" * 5000 + b"}", b'{"metrics": ' * 100 + b"1" + b"}" * 100],
)  # fmt: skip
def test_an_unreadable_eval_json_is_a_hint_not_a_server_error(tmp_path, content):
    """The app's Compare tab on a cut, garbled or foreign eval.json says so (and how to rewrite it) (#37 item 11)."""
    from pocketswap.demo.model_info import comparison

    (tmp_path / "eval.json").write_bytes(content)
    answer = comparison(tmp_path)
    assert answer["available"] is False and "eval.json is unreadable" in answer["hint"], answer


def _on_a_full_disk(body: str) -> str:
    """Run ``body`` (Python lines) in a child whose files may not grow past 64 kB (RLIMIT_FSIZE, SIGXFSZ ignored:
    writes fail with EFBIG as on a full disk); the child prints "ERROR <message>" for an OutputError. Its stdout."""
    import subprocess
    import sys
    import textwrap

    script = "\n".join([
        "import resource, signal",
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))",
        "from pocketswap.core.errors import OutputError",
        "try:",
        textwrap.indent(textwrap.dedent(body).strip(), "    "),
        "except OutputError as exc:",
        "    print('ERROR', exc)",
    ])  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """safetensors on a full disk is one OutputError line naming the file, not a SafetensorError traceback, and no
    temporary file is left (#37 item 4)."""
    line = _on_a_full_disk(f"""
        import torch
        from pocketswap.core.checkpoint import write_checkpoint
        write_checkpoint({str(tmp_path / "ckpt")!r}, {{"w": torch.zeros(1 << 20)}}, {{"kind": "test"}})
    """)
    assert line.startswith("ERROR cannot write") and "model.safetensors" in line and "\n" not in line, line
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [], "a temporary file was left"


def test_a_shard_on_a_full_disk_is_one_line_naming_it_and_leaves_no_temporary_tar(tmp_path):
    """Writing a dataset shard on a full disk ends in one OutputError naming the shard, and the writer's abort
    removes its temporary tar even though closing it fails again (#37 item 7)."""
    line = _on_a_full_disk(f"""
        from pocketswap.core.shards import ShardWriter
        with ShardWriter({str(tmp_path / "shard-000000.tar")!r}) as writer:
            for i in range(64):
                writer.write_encoded([(f"{{i:09d}}.bin", bytes(4096))])
            writer.close()
    """)
    assert line.startswith("ERROR cannot write shard") and "shard-000000.tar" in line and "\n" not in line, line
    assert list(tmp_path.iterdir()) == [], "a temporary tar was left"
