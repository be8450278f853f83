"""The demo, headless, on a synthesised clip: frame count, changes confined to faces, summary, metadata."""

import itertools
import time

import av
import cv2
import numpy as np
import pytest
import torch

from pocketswap.cli import main
from pocketswap.core.manifest import SYNTHETIC_MEDIA_NOTICE
from pocketswap.demo.clip import synthetic_frames, write_clip
from pocketswap.demo.source import CameraError, open_source
from pocketswap.demo.video import read_metadata
from pocketswap.faces.align import align_face, invert_affine, transform_points
from pocketswap.faces.analyzer import FaceAnalyzer
from pocketswap.faces.identity import embed_faces, load_encoder, read_identity
from pocketswap.faces.samples import load
from pocketswap.faces.smoothing import OneEuroFilter
from pocketswap.student import StudentNet, get_preset
from pocketswap.student.checkpoint import save_checkpoint

FRAMES = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano", StudentNet(get_preset("nano")).eval())


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    image = load("grace_hopper")
    face = FaceAnalyzer().detect_one(image)
    path = tmp_path_factory.mktemp("id") / "grace.npy"
    np.save(path, embed_faces(image, [face], load_encoder("dlib"))[0])
    return path


def _frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_headless_video_swaps_faces_only(tmp_path, capsys, checkpoint, identity):
    clip = write_clip(tmp_path / "clip.mp4", frames=FRAMES, empty_every=8)
    out = tmp_path / "out.mp4"
    code = main(["demo", "--model", str(checkpoint), "--identity", str(identity), "--source", str(clip),
                 "--output", str(out), "--headless", "--no-label", "--detect-every", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert f"frames: {FRAMES}" in printed and "mean FPS" in printed and "temporal stability" in printed
    inputs, outputs = _frames(clip), _frames(out)
    assert len(outputs) == len(inputs) == FRAMES
    analyzer = FaceAnalyzer(detector="auto")
    swapped_frames = 0
    for frame_in, frame_out in zip(inputs, outputs, strict=True):
        diff = np.abs(frame_in.astype(np.float32) - frame_out.astype(np.float32)).mean(-1)
        faces = analyzer.detect(frame_in)
        if not faces:  # no face: the frame passes through (up to video compression)
            assert diff.mean() < 3, diff.mean()
            continue
        # The face region: where the aligned crop is pasted back (plus a margin for smoothing).
        matrix = align_face(frame_in, faces[0].keypoints, 128).matrix
        corners = transform_points(
            np.array([[0, 0], [128, 0], [128, 128], [0, 128]], np.float32), invert_affine(matrix)
        )
        region = np.zeros(diff.shape, np.uint8)
        cv2.fillConvexPoly(region, np.round(corners).astype(np.int32), 1)
        region = cv2.dilate(region, np.ones((15, 15), np.uint8)).astype(bool)
        assert diff[~region].mean() < 3, "pixels outside the face changed"
        assert diff[region].mean() > 3 * max(diff[~region].mean(), 1.0), "the face did not change"
        swapped_frames += 1
    assert swapped_frames >= FRAMES // 2
    assert read_metadata(out)["comment"] == SYNTHETIC_MEDIA_NOTICE


def test_image_source_writes_labelled_image(tmp_path, capsys, checkpoint, identity):
    from pocketswap.core.imageio import read_image, write_image

    source = write_image(tmp_path / "astronaut.png", load("astronaut"))
    out = tmp_path / "swapped.png"
    code = main(["demo", "--model", str(checkpoint), "--identity", str(identity), "--source", str(source),
                 "--output", str(out), "--headless"])  # fmt: skip
    assert code == 0 and "frames: 1 (1 with a face" in capsys.readouterr().out
    result, original = read_image(out), load("astronaut")
    corner = np.s_[-40:, :170]  # where the SYNTHETIC label is drawn
    assert (result[corner] != original[corner]).any()


def test_the_same_video_swaps_the_same_on_every_run(tmp_path, capsys, checkpoint, identity):
    # Tracking and landmark smoothing run on the file's own clock (frame count / frame rate), not the wall clock.
    clip = write_clip(tmp_path / "clip.mp4", frames=8)
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.mp4"
        argv = ["demo", "--model", str(checkpoint), "--identity", str(identity), "--source", str(clip), "--out", str(out),
                "--headless", "--no-label"]  # fmt: skip
        assert main(argv) == 0
        if run == 0:
            time.sleep(0.3)  # the second run starts at another wall-clock moment
        outputs.append(np.stack(_frames(out)))
    capsys.readouterr()
    assert outputs[0].shape == outputs[1].shape and np.array_equal(outputs[0], outputs[1])


def test_missing_camera_names_device_and_suggests_a_file():
    with pytest.raises(CameraError, match=r"camera 7 .*--source video.mp4"):
        open_source("7")


def test_the_model_is_the_first_argument_or_an_option_not_two(capsys, checkpoint, tmp_path):
    out = tmp_path / "swapped.png"
    argv = ["--identity", "sample:grace_hopper", "--source", "sample:astronaut", "--headless", "--out", str(out)]
    assert main(["demo", str(checkpoint), *argv]) == 0 and out.is_file()
    assert main(["demo", str(checkpoint), "--model", str(tmp_path / "other"), *argv]) == 2
    assert "two models given" in capsys.readouterr().err
    assert main(["demo", "--source", "sample:astronaut", "--headless"]) == 2
    assert "no model given: pocketswap demo MODEL" in capsys.readouterr().err


def test_checkpoint_without_identity_is_a_clear_error(capsys, checkpoint, tmp_path):
    clip = write_clip(tmp_path / "c.mp4", frames=2)
    assert main(["demo", "--model", str(checkpoint), "--source", str(clip), "--headless"]) == 2
    assert "needs --identity" in capsys.readouterr().err


def test_a_personalised_checkpoint_swaps_its_own_identity_without_one(capsys, tmp_path):
    torch.manual_seed(0)
    own = read_identity("sample:grace_hopper", 128)
    personal = save_checkpoint(
        tmp_path / "me", StudentNet(get_preset("nano")).eval(), extra={"identity": own.to_record()}
    )
    out = tmp_path / "swapped.png"
    argv = ["demo", str(personal), "--source", "sample:astronaut", "--headless", "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
    assert main([*argv[:2], "--identity", "sample:astronaut", *argv[2:]]) == 2  # somebody else: refused
    assert "personalised for grace_hopper" in capsys.readouterr().err


def test_one_euro_filter_smooths_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    flt = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    noisy = 100.0 + rng.normal(0, 2, (60, 1))
    still = [flt(x, i / 30) for i, x in enumerate(noisy)]
    assert np.std(still[10:]) < 0.6 * np.std(noisy[10:])
    moving = [flt(np.array([100.0 + 10 * i]), 2 + i / 30) for i in range(30)]
    assert abs(moving[-1][0] - (100 + 290)) < 15  # keeps up with a fast move


def test_synthetic_clip_has_faceless_frames():
    frames = list(synthetic_frames(frames=12, empty_every=6))
    analyzer = FaceAnalyzer(detector="auto")
    found = [bool(analyzer.detect(f)) for f in frames]
    assert found.count(False) >= 2 and found.count(True) >= 8


@pytest.mark.slow
def test_a_model_baked_for_another_person_is_refused(tmp_path, capsys, checkpoint, identity):
    """`demo --identity B` with a model baked for A would swap A while reporting B: refused; the
    baked person's own .npy is accepted."""
    from pocketswap.core.imageio import write_image

    art = tmp_path / "art"
    assert main(["export", str(checkpoint), "--identity", str(identity), "--format", "onnx", "--precision", "fp32",
                 "--out", str(art)]) == 0  # fmt: skip
    (model,) = art.glob("*.onnx")
    other = write_image(tmp_path / "astronaut.png", load("astronaut"))
    args = ["demo", "--model", str(model), "--source", str(other), "--headless"]
    capsys.readouterr()
    assert main([*args, "--identity", str(other)]) == 2
    assert "is another person" in capsys.readouterr().err
    assert main([*args, "--identity", str(identity), "--output", str(tmp_path / "out.png")]) == 0


def test_windowed_video_plays_at_its_frame_rate_and_holds_the_last_frame(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", fps=20.0, frames=6)
    source = open_source(str(clip), interactive=True)
    start = time.perf_counter()
    frames = list(itertools.islice(source, 10))  # 6 decoded, then the last one held
    elapsed = time.perf_counter() - start
    source.close()
    assert elapsed >= 9 / 20.0 * 0.9, f"10 frames at 20 FPS took only {elapsed:.2f} s"
    assert all(np.array_equal(frames[5], f) for f in frames[6:])
    headless = open_source(str(clip))
    assert len(list(headless)) == 6  # headless: decode speed, and the source ends


def test_swapped_video_keeps_the_audio_track(tmp_path, checkpoint, identity):
    source = tmp_path / "talk.mp4"
    frames = list(synthetic_frames(frames=6, empty_every=0))
    with av.open(str(source), "w") as container:  # a clip with a 440 Hz tone, as a phone records it
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 640, 480, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(8192) / 16000)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    out = tmp_path / "swapped.mp4"
    assert main(["demo", "--model", str(checkpoint), "--identity", str(identity), "--source", str(source),
                 "--output", str(out), "--headless"]) == 0  # fmt: skip
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1 and container.streams.audio[0].codec_context.name == "aac"
        audio_packets = sum(1 for p in container.demux(container.streams.audio[0]) if p.size)
    assert audio_packets > 5
    assert len(_frames(out)) == len(frames)


class _PaintsOverEverything:
    """A swap model that draws flat grey over the whole crop, mouth included (the worst a student can do)."""

    size, template, needs_landmarks, matches_colour = 128, "arcface", False, True

    def __call__(self, crop, landmarks=None):
        return np.full_like(crop, 128), np.ones(crop.shape[:2], np.float32)


def test_the_frames_teeth_survive_a_model_that_paints_over_them():
    """Whatever a model draws over the mouth, the frame's mouth opening (the astronaut's teeth) comes back at
    paste-back; with keep_mouth off the model's grey covers it. The cheeks are the model's either way."""
    from pocketswap.demo.pipeline import LiveSwapper
    from pocketswap.demo.settings import PipelineConfig
    from pocketswap.faces.raster import polygon_distances
    from pocketswap.faces.types import INNER_LIP, MOUTH_CORNERS, NOSE_TIP

    frame, analyzer = load("astronaut"), FaceAnalyzer(num_threads=1)
    points = analyzer.detect_one(frame).landmarks[:, :2]
    width = float(np.linalg.norm(points[MOUTH_CORNERS[0]] - points[MOUTH_CORNERS[1]]))
    ys, xs = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    depth = polygon_distances(np.stack([xs.ravel(), ys.ravel()], 1), points[list(INNER_LIP)], beyond=width)
    teeth = (depth > 0.06 * width).reshape(frame.shape[:2])
    assert teeth.sum() > 20  # the astronaut smiles with her teeth showing

    def swapped(keep_mouth):
        config = PipelineConfig(detect_every=1, keep_mouth=keep_mouth, color_transfer=False, keep_detail=False)
        return LiveSwapper(_PaintsOverEverything(), analyzer, config).process(frame).frame.astype(int)

    kept, painted = swapped(True), swapped(False)
    assert np.abs(kept[teeth] - frame[teeth]).max() <= 2
    assert np.abs(painted[teeth] - frame[teeth]).mean() > 30
    cheek = tuple(np.round((points[NOSE_TIP] + points[MOUTH_CORNERS[0]]) / 2 - [0.15 * width, 0]).astype(int)[::-1])
    assert np.abs(kept[cheek] - 128).max() <= 2 and np.abs(painted[cheek] - 128).max() <= 2


@pytest.mark.parametrize("suffix", (".mkv", ".webm"))
def test_a_clip_whose_sound_outlasts_its_picture_is_read_whole_without_a_false_alarm(tmp_path, caplog, suffix):
    """Matroska/WebM give no frame count, and their container's duration is the sound's (3 s here, for 1 s of
    picture): OpenCV's count said 36 and the reader warned 'decoding stopped at frame 12 of 36 (the rest is
    unreadable)' though every frame was read. The count now comes from the video stream itself."""
    from pocketswap.demo.source import VideoSource

    path = tmp_path / f"talk{suffix}"
    opus = suffix == ".webm"
    rate, size = (48000, 960) if opus else (16000, 1024)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx" if opus else "libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("libopus" if opus else "aac", rate=rate)
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for start in range(0, 3 * rate - size, size):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, size), np.float32), format="flt" if opus else "fltp",
                                               layout="mono")  # fmt: skip
            chunk.sample_rate, chunk.pts = rate, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    source = VideoSource(path)
    with caplog.at_level("WARNING"):
        frames = list(source)
    source.close()
    assert len(frames) == 12 and source.frame_count == 12 and source.frame_count_exact
    assert not [r for r in caplog.records if "unreadable" in r.getMessage()], caplog.text


def test_a_cut_video_still_says_where_its_picture_stops(tmp_path, caplog):
    """The warning stays where it is true: an .mp4 cut in half (its index up front says 24 frames)."""
    from pocketswap.demo.source import VideoSource

    path = tmp_path / "whole.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for _ in range(24):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    source = VideoSource(cut, name="the uploaded video cut.mp4")
    with caplog.at_level("WARNING"):
        frames = list(source)
    source.close()
    assert 0 < len(frames) < 24 and source.frame_count == 24
    assert f"the uploaded video cut.mp4: decoding stopped at frame {len(frames)} of 24" in caplog.text
