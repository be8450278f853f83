"""The one way every stage opens and runs a model file: ONNX Runtime sessions and LiteRT interpreters.

:func:`onnx_session` and :func:`tflite_interpreter` open a file (CPU, ``threads`` intra-op threads) and
turn a corrupt, truncated or foreign file into one :class:`ModelSignatureError` line; export parity, the
teacher adapters, the ArcFace encoder, the face front end, the demo and the benchmarks all use them.
:class:`TFLiteRunner` and :class:`OnnxRunner` run an artifact with tensors by name, in the model's own
layout (``runner.layout``: NHWC for LiteRT, NCHW for ONNX), int8 tensors quantised with their own scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import ModelSignatureError


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[-1])[:200]


def onnx_session(path: str | Path, threads: int = 0, what: str = "ONNX model", quiet: bool = False) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` 0: the runtime's default; ``quiet``: errors only
    in its log); ModelSignatureError naming ``what`` when the file does not load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelSignatureError(f"{path}: not a loadable {what} ({_first_line(exc)})") from exc


def tflite_interpreter(model: str | Path | bytes, threads: int = 1) -> Any:
    """A LiteRT interpreter (XNNPACK) with its tensors allocated, for a ``.tflite`` path or its bytes;
    ModelSignatureError when the file does not load."""
    from ai_edge_litert.interpreter import Interpreter

    where = "model bytes" if isinstance(model, bytes | bytearray) else str(model)
    try:
        if isinstance(model, bytes | bytearray):
            interpreter = Interpreter(model_content=bytes(model), num_threads=max(1, int(threads)))
        else:
            interpreter = Interpreter(model_path=str(model), num_threads=max(1, int(threads)))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelSignatureError(f"{where}: not a loadable .tflite model ({_first_line(exc)})") from exc
    return interpreter


class TFLiteRunner:
    """Runs a .tflite with tensors by name. ``native=False`` (the default) speaks PyTorch layouts (NCHW images,
    4-D tensors transposed to and from NHWC); ``native=True`` passes NHWC through untouched."""

    layout = "NHWC"

    def __init__(self, model: str | Path | bytes, num_threads: int = 1) -> None:
        self.interpreter = tflite_interpreter(model, num_threads)
        self.inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        self.outputs = {d["name"]: d for d in self.interpreter.get_output_details()}

    def __call__(self, feeds: dict[str, np.ndarray], native: bool = False) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            if name not in self.inputs:
                raise ModelSignatureError(f"TFLite model has no input {name!r} (it has {', '.join(self.inputs)})")
            d = self.inputs[name]
            value = np.asarray(value, np.float32)
            if value.ndim == 4 and not native:
                value = value.transpose(0, 2, 3, 1)
            self.interpreter.set_tensor(d["index"], _quantize(value, d))
        self.interpreter.invoke()
        out = {}
        for name, d in self.outputs.items():
            value = _dequantize(self.interpreter.get_tensor(d["index"]), d)
            out[name] = value.transpose(0, 3, 1, 2) if value.ndim == 4 and not native else value
        return out


def _quantize(value: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(value / scale + zero), info.min, info.max).astype(detail["dtype"])
    return value.astype(detail["dtype"], copy=False)


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (value.astype(np.float32) - zero) * scale
    return value.astype(np.float32, copy=False)


class OnnxRunner:
    """Runs a .onnx with tensors by name (NCHW, as exported; ``native`` changes nothing); float16 inputs are
    cast from float32 feeds and every result is float32."""

    layout = "NCHW"

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        self.session = onnx_session(path, num_threads)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray], native: bool = False) -> dict[str, np.ndarray]:
        missing = sorted(set(feeds) - set(self.inputs))
        if missing:
            raise ModelSignatureError(f"ONNX model has no input {missing[0]!r} (it has {', '.join(self.inputs)})")
        typed = {
            name: np.asarray(v, np.float16 if "float16" in self.inputs[name].type else np.float32)
            for name, v in feeds.items()
        }
        results = self.session.run(None, typed)
        return {name: v.astype(np.float32, copy=False) for name, v in zip(self.outputs, results, strict=True)}


def open_runner(path: str | Path, num_threads: int = 1) -> TFLiteRunner | OnnxRunner:
    """The runner for a ``.tflite`` or ``.onnx`` file."""
    return TFLiteRunner(path, num_threads) if Path(path).suffix == ".tflite" else OnnxRunner(path, num_threads)


__all__ = ["OnnxRunner", "TFLiteRunner", "onnx_session", "open_runner", "tflite_interpreter"]
