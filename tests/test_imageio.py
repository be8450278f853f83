"""Bad and unusual image inputs: converted when usable, a clear typed error otherwise."""

import cv2
import numpy as np
import pytest

from pocketswap.core.errors import ImageReadError
from pocketswap.core.imageio import read_image, to_rgb_uint8, write_image
from pocketswap.faces import samples


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return samples.load("astronaut")


def test_roundtrip_png_is_rgb(tmp_path, astronaut):
    path = write_image(tmp_path / "a.png", astronaut)
    np.testing.assert_array_equal(read_image(path), astronaut)


def test_grayscale_rgba_and_16bit_are_converted(tmp_path, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], gray)

    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), astronaut)

    deep = astronaut.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), astronaut)


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    assert (to_rgb_uint8(rgba) == 255).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("not an image at all"), "not an image or corrupt"),
        (lambda p: cv2.imwrite(str(p), np.zeros((10, 10, 3), np.uint8)), "too small"),
    ],
    ids=["missing", "empty", "text", "tiny"],
)
def test_bad_files_raise_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


def test_truncated_jpeg_is_an_error_not_a_crash(tmp_path, astronaut):
    write_image(tmp_path / "full.jpg", astronaut)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 20])
    try:
        image = read_image(tmp_path / "cut.jpg")  # OpenCV may decode a partial JPEG; then it's an image
        assert image.shape == astronaut.shape
    except ImageReadError as exc:
        assert "cut.jpg" in str(exc)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_samples_load_and_unknown_name():
    assert samples.load("grace_hopper").shape == (600, 512, 3)
    assert samples.load("lfw_07").shape == (160, 160, 3)
    assert len(samples.names()) == 103
    with pytest.raises(ImageReadError, match="unknown sample"):
        samples.load("lfw_100")


def test_a_huge_file_is_refused_from_its_header_or_size_unread(tmp_path, monkeypatch):
    """A 100 MB file of zeros named .png is refused from its header, never read whole; a file over the size
    limit is refused before anything is read (sparse files: no disk is used)."""
    from pathlib import Path

    from pocketswap.core.imageio import MAX_IMAGE_BYTES

    def no_whole_reads(path):
        raise AssertionError(f"{path} was read whole")

    monkeypatch.setattr(Path, "read_bytes", no_whole_reads)
    zeros = tmp_path / "zeros.png"
    with open(zeros, "wb") as handle:
        handle.truncate(100 << 20)
    with pytest.raises(ImageReadError, match="not an image or corrupt"):
        read_image(zeros)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ImageReadError, match="over the 512 MiB limit"):
        read_image(huge)
