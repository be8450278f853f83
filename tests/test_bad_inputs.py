"""The bad-input matrix: every subcommand against missing, empty, wrong-type and truncated inputs,
corrupt artifacts, out-of-range numbers and unwritable outputs. Each case must end with one
`error:` line, exit status 2, no traceback and no temporary file left behind."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from pocketswap.cli import main
from pocketswap.errors import ConfigError, OutputError
from pocketswap.files import atomic_write_bytes, check_output
from pocketswap.imageio import write_image


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
    from pocketswap.config import distributed_rank

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match="RANK"):
        distributed_rank()


def test_config_flags_are_typed_by_their_field(tmp_path, capsys):
    import argparse

    from pocketswap.cli import add_config_flags, config_flags
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
