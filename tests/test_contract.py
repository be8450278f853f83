"""The artifact manifest's ``swap_spec`` is the whole crop-and-paste contract: a client that reads only the
manifest (numpy, OpenCV, ONNX Runtime; nothing of pocketswap) reproduces ``pocketswap demo``'s swap on real
bundled photos. The landmarks come from pocketswap's front end for both (``swap_spec.front_end`` names its
recipe); everything after them is the client's own."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from pocketswap.demo.pipeline import LiveSwapper, PipelineConfig
from pocketswap.faces import samples
from pocketswap.faces.analyzer import FaceAnalyzer
from pocketswap.runtime import load_swap_model


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) taking ``src`` onto ``dst``, 2x3 float32."""
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / src_c.var(0).sum()
    return np.hstack([scale * rotation, (dst.mean(0) - scale * rotation @ src.mean(0))[:, None]]).astype(np.float32)


def client_swap(frame: np.ndarray, landmarks: np.ndarray, manifest: dict, session: ort.InferenceSession) -> np.ndarray:
    """One face swapped and pasted from the manifest's numbers alone."""
    spec = manifest["swap_spec"]
    crop, norm, paste = spec["crop"], spec["normalization"], spec["paste"]
    size = crop["size"]
    xy = landmarks[:, :2].astype(np.float32)
    keypoints = np.stack([xy[group].mean(0) for group in crop["keypoints"]]).astype(np.float64)
    matrix = _similarity(keypoints, np.asarray(crop["template_points"], np.float64))
    assert (crop["resample"], crop["border"]) == ("bicubic", "reflect")
    aligned = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    (image_input,) = manifest["inputs"]
    assert image_input["layout"] == "NCHW"
    tensor = (aligned.astype(np.float32) * np.float32(norm["scale"]) + np.float32(norm["offset"])).transpose(2, 0, 1)
    swapped, mask = session.run(["swapped", "mask"], {image_input["name"]: tensor[None]})
    pixels = (swapped[0].transpose(1, 2, 0) - norm["offset"]) * (1.0 / norm["scale"])
    swapped = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)

    width = max(paste["edge_ramp"] * size, 1.0)  # alpha: the mask times the edge ramp
    ramp = np.clip((np.arange(size, dtype=np.float32) + 0.5) / width, 0.0, 1.0)
    ramp = np.minimum(ramp, ramp[::-1])
    alpha = mask[0, 0] * np.minimum.outer(ramp, ramp)

    colour = paste["colour_transfer"]  # CIELAB mean/std of the swap matched to the frame's, over the alpha's core
    region = (alpha > colour["region_above"]).astype(np.uint8)
    if cv2.countNonZero(region) >= colour["min_pixels"]:
        target = cv2.cvtColor(cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR), cv2.COLOR_RGB2LAB)
        source = cv2.cvtColor(swapped, cv2.COLOR_RGB2LAB)
        (s_mean, s_std), (t_mean, t_std) = cv2.meanStdDev(source, mask=region), cv2.meanStdDev(target, mask=region)
        gain = ((t_std + colour["eps"]) / (s_std + colour["eps"])).ravel()
        swapped = cv2.cvtColor(cv2.transform(source, np.hstack([np.diag(gain), t_mean - gain[:, None] * s_mean])),
                               cv2.COLOR_LAB2RGB)  # fmt: skip

    inverse = cv2.invertAffineTransform(matrix)  # back to the frame: bicubic, low-passed when it shrinks
    scale = float(np.sqrt(abs(np.linalg.det(inverse[:, :2].astype(np.float64)))))
    if scale < 1.0:
        swapped = cv2.GaussianBlur(swapped, (0, 0), 0.5 * np.sqrt(1.0 / scale**2 - 1.0))
    height, width = frame.shape[:2]
    back = cv2.warpAffine(swapped, inverse, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if scale > 1.0:  # the frame's luminance detail that the crop cannot hold
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        seen = cv2.warpAffine(grey, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        again = cv2.warpAffine(seen, inverse, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        back = cv2.add(back, cv2.merge([cv2.subtract(grey, again, dtype=cv2.CV_16S)] * 3), dtype=cv2.CV_8U)
    weight = cv2.warpAffine(alpha.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    return cv2.blendLinear(back, frame, weight, 1.0 - weight)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from pocketswap.checkpoint import save_checkpoint
    from pocketswap.export.pipeline import export_model
    from pocketswap.student import StudentNet, get_preset

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("contract")
    checkpoint = save_checkpoint(root / "nano", StudentNet(get_preset("nano")).eval())
    (exported,) = export_model(checkpoint, root / "out", identity="sample:grace_hopper", formats="onnx")
    return exported.path


@pytest.mark.parametrize("name", ["astronaut", "lfw_01"])  # a face larger than the crop (detail); a smaller one
def test_a_client_reading_only_the_manifest_swaps_as_the_demo_does(artifact, name):
    manifest = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    analyzer = FaceAnalyzer(detector="auto")
    frame = samples.load(name)
    face = analyzer.detect_one(frame)
    demo = LiveSwapper(load_swap_model(artifact), analyzer, PipelineConfig(detect_every=1)).process(frame).frame
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    client = client_swap(frame, face.landmarks, manifest, session)
    x0, y0, x1, y1 = np.round(face.box).astype(int)
    inside = np.abs(client[y0:y1, x0:x1].astype(np.float64) - demo[y0:y1, x0:x1]).mean()
    changed = np.abs(demo[y0:y1, x0:x1].astype(np.float64) - frame[y0:y1, x0:x1]).mean()
    assert changed > 3.0, changed  # the swap changed the face ...
    assert inside < 1.0, inside  # ... and the client made the same change
    assert np.abs(client.astype(np.float64) - demo).mean() < 0.2  # and nothing else
