"""`pocketswap faces ...` end to end on bundled faces, and its one-line errors on bad input."""

import json

import cv2
import numpy as np
import pytest

from pocketswap.cli import main
from pocketswap.core.imageio import read_image, write_image
from pocketswap.faces import samples


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_detect_writes_annotated_image_and_json(tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "faces",
        "detect",
        "sample:astronaut",
        "--out",
        str(tmp_path / "a.png"),
        "--json",
        str(tmp_path / "a.json"),
    )
    assert code == 0 and "1 face(s)" in out
    result = json.loads((tmp_path / "a.json").read_text())
    (face,) = result["faces"]
    assert len(face["landmarks"]) == 468 and len(face["keypoints"]) == 5
    annotated = read_image(tmp_path / "a.png")
    assert annotated.shape == (512, 512, 3)
    assert (annotated != samples.load("astronaut")).any()


def test_align_embed_and_compare(tmp_path, capsys):
    code, _, _ = run(capsys, "faces", "align", "sample:grace_hopper", "--size", "128", "--out", str(tmp_path / "c.png"))
    assert code == 0 and read_image(tmp_path / "c.png").shape == (128, 128, 3)
    code, _, _ = run(capsys, "faces", "embed", "sample:grace_hopper", "--out", str(tmp_path / "e.npy"))
    embedding = np.load(tmp_path / "e.npy")
    assert code == 0 and embedding.shape == (128,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    flipped = tmp_path / "flipped.png"
    write_image(flipped, samples.load("astronaut")[:, ::-1])
    code, out, _ = run(capsys, "faces", "compare", "sample:astronaut", str(flipped))
    assert code == 0 and "same person" in out
    code, out, _ = run(capsys, "faces", "compare", "sample:astronaut", "sample:grace_hopper")
    assert code == 0 and "different people" in out


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (None, "no such file"),
        (lambda p: p.write_bytes(b"\x89PNG garbage"), "not an image or corrupt"),
        (lambda p: write_image(p, np.full((20, 20, 3), 128, np.uint8)), "too small"),
        (lambda p: write_image(p, np.full((300, 400, 3), 128, np.uint8)), "no face found"),
    ],
    ids=["missing", "corrupt", "tiny", "no-face"],
)
def test_bad_input_is_one_readable_line(tmp_path, capsys, make, expected):
    path = tmp_path / "input.png"
    if make:
        make(path)
    code, _, err = run(capsys, "faces", "align", str(path), "--out", str(tmp_path / "crop.png"))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("pocketswap: error:")]
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "crop.png").exists()


def test_unknown_sample_is_an_error(capsys):
    code, _, err = run(capsys, "faces", "detect", "sample:nobody")
    assert code == 2 and "unknown sample 'nobody'" in err


def test_detect_without_a_face_writes_its_outputs_and_says_so(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    code, out, err = run(capsys, "faces", "detect", str(blank), "--json", str(tmp_path / "faces.json"))
    assert code == 2 and "no face found" in err and "0 face(s)" in out
    assert json.loads((tmp_path / "faces.json").read_text())["faces"] == []


def test_help_lists_every_faces_action(capsys):
    with pytest.raises(SystemExit):
        main(["faces", "--help"])
    out = capsys.readouterr().out
    for action in ("detect", "align", "embed", "compare", "bench"):
        assert action in out
