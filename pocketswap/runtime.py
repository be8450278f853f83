"""Run a swap model on aligned crops, whatever its format: one interface for the demo and benchmarks.

`load_swap_model(path)` accepts a baked ``.tflite`` (LiteRT with XNNPACK), ``.onnx`` (ONNX Runtime),
``.mlpackage`` (CoreML, macOS only) or a student checkpoint (PyTorch; needs an identity embedding).
Every model maps an aligned SxSx3 uint8 RGB crop to (swapped crop uint8, mask float32 SxS in [0,1]).
Tensor layouts are read from the model itself (NHWC for TFLite, NCHW elsewhere), int8 models are
quantised/dequantised with their own scales, and outputs are told apart by channel count (3 vs 1).
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Protocol

import numpy as np

from pocketswap.errors import ModelSignatureError, PocketswapError

log = logging.getLogger(__name__)


class SwapModel(Protocol):
    size: int
    template: str
    name: str

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def to_unit_range(crop: np.ndarray) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 HxWx3 in [-1, 1]."""
    return crop.astype(np.float32) * (1.0 / 127.5) - 1.0


def from_unit_range(image: np.ndarray) -> np.ndarray:
    """float HxWx3 in [-1, 1] -> uint8 RGB."""
    return np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _manifest(path: Path) -> dict:
    candidate = path.with_name(path.name + ".json")
    if candidate.is_file():
        try:
            return json.loads(candidate.read_text())
        except json.JSONDecodeError:
            log.warning("%s: unreadable manifest ignored", candidate)
    return {}


def _split_outputs(outputs: list[np.ndarray], channel_axis: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    by_channels = {out.shape[channel_axis]: out for out in outputs}
    if set(by_channels) != {1, 3}:
        shapes = [list(out.shape) for out in outputs]
        raise ModelSignatureError(f"{where}: expected an image output (3 channels) and a mask output (1), got {shapes}")
    image, mask = by_channels[3], by_channels[1]
    if channel_axis == 1:
        image, mask = image[0].transpose(1, 2, 0), mask[0, 0]
    else:
        image, mask = image[0], mask[0, ..., 0]
    return from_unit_range(image), np.clip(mask.astype(np.float32), 0.0, 1.0)


class TFLiteSwapModel:
    """A baked student `.tflite` run with LiteRT (XNNPACK on CPU)."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.name = path.name
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelSignatureError(f"{path}: not a loadable .tflite model ({exc})") from exc
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][-1] != 3:
            raise ModelSignatureError(
                f"{path}: expected one NHWC image input [1,S,S,3] (a baked student); "
                f"found {[list(i['shape']) for i in inputs]} — dynamic-identity models need `identity` params"
            )
        self.input = inputs[0]
        self.outputs = self.interpreter.get_output_details()
        self.size = int(self.input["shape"][1])
        self.template = _manifest(path).get("template", "arcface")

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = to_unit_range(crop)[None]
        scale, zero = self.input["quantization"]
        if self.input["dtype"] in (np.int8, np.uint8):
            x = np.round(x / scale + zero)
            info = np.iinfo(self.input["dtype"])
            x = np.clip(x, info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        results = []
        for detail in self.outputs:
            out = self.interpreter.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            if detail["dtype"] in (np.int8, np.uint8):
                out = (out.astype(np.float32) - zero) * scale
            results.append(out)
        return _split_outputs(results, -1, self.name)


class OnnxSwapModel:
    """A baked student `.onnx` run with ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        import onnxruntime as ort

        self.name = path.name
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelSignatureError(f"{path}: not a loadable ONNX model ({exc})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise ModelSignatureError(
                f"{path}: expected one NCHW image input [1,3,S,S] (a baked student); found {[i.shape for i in inputs]}"
            )
        self.input_name = inputs[0].name
        self.dtype = np.float16 if "float16" in inputs[0].type else np.float32
        self.size = int(inputs[0].shape[2])
        self.template = _manifest(path).get("template", "arcface")

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = to_unit_range(crop).transpose(2, 0, 1)[None].astype(self.dtype)
        outputs = self.session.run(None, {self.input_name: x})
        return _split_outputs([o.astype(np.float32) for o in outputs], 1, self.name)


class TorchSwapModel:
    """A student checkpoint with one identity baked in, run in PyTorch (eager)."""

    def __init__(self, path: Path, embedding: np.ndarray, num_threads: int = 1) -> None:
        import torch

        from pocketswap.checkpoint import load_checkpoint, locked_identity, resolve_checkpoint
        from pocketswap.faces.identity import same_person_threshold

        torch.set_num_threads(num_threads)
        model, config, extra = load_checkpoint(resolve_checkpoint(path))
        embedding = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if embedding.shape[1] != config.embed_dim:
            raise ModelSignatureError(
                f"{path}: the student expects a {config.embed_dim}-d identity embedding, got {embedding.shape[1]}-d"
            )
        if config.identity_encoder:
            raise ModelSignatureError(f"{path}: a spatial-identity student needs the identity photo: export it first")
        embedding = locked_identity(extra, embedding, "the given identity", same_person_threshold()).reshape(1, -1)
        self.model = model.bake(torch.from_numpy(embedding)).eval()
        self.name = Path(path).name
        self.size, self.template = config.size, config.template
        self._torch = torch

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._torch.from_numpy(to_unit_range(crop).transpose(2, 0, 1)[None].copy())
        with self._torch.inference_mode():
            image, mask = self.model(x)
        return _split_outputs([image.numpy(), mask.numpy()], 1, self.name)


def load_swap_model(path: str | Path, embedding: np.ndarray | None = None, num_threads: int = 1) -> SwapModel:
    """Open a baked artifact or a checkpoint (which needs `embedding`) as a `SwapModel`."""
    path = Path(path)
    if not path.exists():
        raise PocketswapError(f"{path}: no such model file")
    if path.suffix == ".tflite":
        return TFLiteSwapModel(path, num_threads)
    if path.suffix == ".onnx":
        return OnnxSwapModel(path, num_threads)
    if path.suffix == ".mlpackage":
        if platform.system() != "Darwin":
            raise PocketswapError(f"{path}: CoreML models run only on macOS; use the .tflite or .onnx export here")
        raise PocketswapError(f"{path}: CoreML inference in the demo is not implemented yet; use .tflite or .onnx")
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        if embedding is None:
            raise PocketswapError(f"{path}: a checkpoint needs an identity embedding to bake")
        return TorchSwapModel(path, embedding, num_threads)
    raise PocketswapError(f"{path}: unsupported model type (expected .tflite, .onnx, .mlpackage or a checkpoint)")
