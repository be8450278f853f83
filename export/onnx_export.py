"""PyTorch -> ONNX with ``torch.onnx.export`` (dynamo exporter), ``onnx.checker`` and an op lint.

The dynamo exporter is used because the legacy one turns the dynamic student's 9 shifted slices
into Slice nodes that onnx2tf mis-transposes. The lint names the layer and the reason for graph
patterns the mobile converters are known to get wrong or run slowly (export-findings.md):
GroupNorm/LayerNorm (onnx2tf outputs zeros), bilinear ``align_corners=True`` (onnx2tf wrong),
convolutions with a runtime weight (onnx2tf crashes), nearest resize and gathers (not XNNPACK).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketswap.export.common import ExportError, UnsupportedError, captured_output

log = logging.getLogger(__name__)

OPSET = 18

# op type -> reason: these make a TFLite conversion wrong or impossible (checked before onnx2tf runs).
ERROR_OPS = {
    "GroupNormalization": "onnx2tf converts GroupNorm silently wrong (all-zero outputs); use InstanceNorm or BatchNorm",
    "LayerNormalization": "onnx2tf converts LayerNorm over C,H,W silently wrong; use InstanceNorm or BatchNorm",
    "ConvTranspose": "transposed convolutions become many TRANSPOSE_CONV ops; use bilinear upsampling + conv",
    "Loop": "control flow does not convert to TFLite/CoreML",
    "If": "control flow does not convert to TFLite/CoreML",
}
# op type -> reason: these convert but are not delegated to XNNPACK (slow on phones).
SLOW_OPS = {
    "Gather": "GATHER is not delegated to XNNPACK",
    "GatherElements": "not delegated to XNNPACK",
    "Expand": "BROADCAST_TO is not delegated to XNNPACK",
    "NonZero": "dynamic shapes are not delegated",
}


def export_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = OPSET,
) -> Path:
    """Export ``module`` (eval mode, static shapes) to ``path`` and run ``onnx.checker`` on it."""
    import onnx

    path = Path(path)
    module = module.eval()
    try:
        with captured_output("torch.onnx.export"), torch.no_grad():
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; name the model and re-raise as ours
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {str(exc).splitlines()[0]}") from exc
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejected the exported graph: {str(exc).splitlines()[0]}") from exc
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise ExportError(
            f"{path.name}: exported I/O names {got_in} -> {got_out}, expected {list(input_names)} -> {list(output_names)}"
        )
    return path


def onnx_ops(path: str | Path) -> dict[str, int]:
    """Op type -> count (Constant nodes excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.op_type != "Constant").items()))


def lint_onnx(path: str | Path, target: str = "tflite") -> list[str]:
    """Raise UnsupportedError for a node that ``target`` cannot convert correctly; return warnings for slow ones."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    producers = {o: n for n in graph.node for o in n.output}
    warnings = []
    for node in graph.node:
        where = f"{node.op_type} node '{node.name}' ({_layer_of(node, producers, constants)})"
        if node.op_type in ERROR_OPS:
            raise UnsupportedError(f"{where}: {ERROR_OPS[node.op_type]}")
        if (
            node.op_type == "InstanceNormalization"
            and getattr(producers.get(node.input[0]), "op_type", "") == "Reshape"
        ):
            # how the exporter writes GroupNorm: Reshape to groups -> InstanceNormalization -> Reshape
            raise UnsupportedError(f"{where}: {ERROR_OPS['GroupNormalization']}")
        if node.op_type == "Conv" and target == "tflite" and node.input[1] not in constants:
            raise UnsupportedError(
                f"{where}: convolution weight '{node.input[1]}' is computed at run time; onnx2tf cannot convert it "
                "(write runtime depthwise filters as shifted multiply-adds)"
            )
        if node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mode = attrs.get("mode", b"nearest").decode()
            ctm = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if mode == "linear" and ctm == "align_corners" and target == "tflite":
                raise UnsupportedError(
                    f"{where}: bilinear align_corners=True converts wrong with onnx2tf; use align_corners=False"
                )
            if mode == "nearest":
                warnings.append(f"{where}: nearest resize is not delegated to XNNPACK (bilinear is, and is faster)")
        if node.op_type == "Concat" and len(node.input) > 4:
            warnings.append(f"{where}: a concat of {len(node.input)} tensors is not delegated to XNNPACK (4 at most)")
        if node.op_type in SLOW_OPS:
            warnings.append(f"{where}: {SLOW_OPS[node.op_type]}")
    for w in warnings:
        log.warning(w)
    return warnings


def layer_hint(graph, node) -> str:
    """Where ``node`` sits, e.g. "near layer 'decoder.0.2'" (the nearest PyTorch parameter feeding it)."""
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    producers = {o: n for n in graph.node for o in n.output}
    return _layer_of(node, producers, constants)


def _layer_of(node, producers: dict, constants: set[str], depth: int = 12) -> str:
    """The nearest PyTorch parameter name feeding ``node`` (walking up the graph), as a layer hint."""
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for name in n.input:
                if name in constants and "." in name:
                    return f"near layer '{name.rsplit('.', 1)[0]}'"
                if name in producers and name not in seen:
                    seen.add(name)
                    nxt.append(producers[name])
        frontier = nxt
    return "input stage"


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with onnxruntime on CPU; returns outputs in graph order."""
    from pocketswap.core.runners import onnx_session

    session = onnx_session(path, quiet=True)
    return session.run(None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})


def convert_onnx_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 weights and activations with float32 inputs/outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _toposort(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def _toposort(graph) -> None:
    """Reorder ``graph.node`` topologically (the float16 converter appends its input casts at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError("ONNX graph has a cycle or an undefined input; cannot sort it")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def quantize_onnx_int8(src: str | Path, dst: str | Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Static QDQ int8 (per-channel weights, calibrated activations) with onnxruntime.quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    with captured_output("onnxruntime.quantization"):
        quantize_static(
            str(src),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    return Path(dst)
