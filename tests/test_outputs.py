"""Output paths are checked before work starts: one clear line, exit status 2, nothing left behind."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from pocketswap.cli import main
from pocketswap.errors import OutputError
from pocketswap.files import atomic_write_bytes, check_output
from pocketswap.imageio import write_image


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
    argv = [a.format(tmp=tmp_path, file=a_file) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
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
