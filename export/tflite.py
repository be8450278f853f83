"""ONNX -> TFLite with onnx2tf (TensorFlow), then I/O renaming, a signature, op list, delegation and benchmark.

Facts this relies on (export-findings.md):

- onnx2tf downloads a calibration/test file when every input is an image, and crashes offline. It is
  run in a temp working directory that already holds ``calibration_image_sample_data_20x128x128x3_float32.npy``
  made from our own crops, and int8 calibration is always passed explicitly (``custom_input_op_name_np_data_path``).
- onnx2tf transposes every 4-D input to NHWC; the identity vector stays a flat [1, P] input.
- XNNPACK takes the baked student whole (bilinear ``align_corners=False``, no nearest resize, no gather).
- One onnx2tf run writes fp32, fp16 and (with calibration) full-integer int8 models; int8 here is
  ``*_integer_quant.tflite``: int8 weights and activations with float32 input/output (a QUANTIZE and a
  DEQUANTIZE at the edges), which XNNPACK runs whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketswap.core.jsonio import read_json
from pocketswap.export.common import ExportError, UnsupportedError, captured_output, interrupt_after

log = logging.getLogger(__name__)

ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SUFFIXES = {"fp32": "float32", "fp16": "float16", "int8": "integer_quant"}
SIGNATURE_KEY = "serving_default"
# Builtin ops XNNPACK's delegate takes for float models (LiteRT docs); others run on builtin kernels.
XNNPACK_FLOAT_OPS = frozenset(
    [
        "ABS",
        "ADD",
        "AVERAGE_POOL_2D",
        "BATCH_MATMUL",
        "CEIL",
        "CONCATENATION",
        "CONV_2D",
        "DEPTH_TO_SPACE",
        "DEPTHWISE_CONV_2D",
        "DEQUANTIZE",
        "DIV",
        "ELU",
        "FLOOR",
        "FULLY_CONNECTED",
        "GELU",
        "HARD_SWISH",
        "LEAKY_RELU",
        "LOGISTIC",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MUL",
        "NEG",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "ROUND",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQRT",
        "SQUARE",
        "SQUARED_DIFFERENCE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    ]
)


def _silence_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def convert_onnx(
    onnx_path: str | Path,
    workdir: str | Path,
    precisions: Sequence[str],
    sample_crops: np.ndarray,
    calibration: dict[str, np.ndarray] | None = None,
    flat_inputs: Sequence[str] = (),
) -> dict[str, Path]:
    """Convert with onnx2tf in ``workdir``; returns precision -> .tflite path (not yet renamed).

    sample_crops: uint8 NxHxWx3 faces for onnx2tf's own test inference (so it never downloads one).
    calibration: for int8, input name -> float32 array in the TFLite layout (NHWC images in [-1, 1], flat vectors).
    flat_inputs: non-image inputs whose shape must be kept as is.
    """
    _silence_tf()
    try:
        with interrupt_after(), captured_output("import onnx2tf"):
            import onnx2tf
    except ImportError as exc:
        raise UnsupportedError(f"TFLite export needs TensorFlow + onnx2tf ({exc}); install pocketswap[export]") from exc

    onnx_path = Path(onnx_path).resolve()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_sample_file(workdir / ONNX2TF_SAMPLE_FILE, sample_crops)
    want_int8 = "int8" in precisions
    cind = None
    if want_int8:
        if not calibration:
            raise UnsupportedError("int8 TFLite needs calibration data (none was given)")
        cind = []
        for name, data in calibration.items():
            npy = workdir / f"calib_{name}.npy"
            np.save(npy, np.ascontiguousarray(data, np.float32))
            zeros = np.zeros((1,) * (data.ndim - 1) + (data.shape[-1],), np.float32)
            cind.append([name, str(npy), zeros, np.ones_like(zeros)])
    out_dir = workdir / "onnx2tf"
    output = None
    try:
        with contextlib.chdir(workdir), captured_output("onnx2tf") as output:
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(out_dir),
                copy_onnx_input_output_names_to_tflite=True,
                output_integer_quantized_tflite=want_int8,
                custom_input_op_name_np_data_path=cind,
                keep_shape_absolutely_input_names=list(flat_inputs) or None,
                non_verbose=True,
                verbosity="error",
            )
    except (SystemExit, Exception) as exc:  # onnx2tf logs the failing ONNX op, then raises or calls sys.exit(1)
        reason = str(exc).splitlines()[0] if str(exc) and not isinstance(exc, SystemExit) else type(exc).__name__
        where = _failing_node(onnx_path, output.getvalue() if output is not None else "")
        raise ExportError(f"onnx2tf failed on {onnx_path.name}{where}: {reason}") from exc
    paths = {}
    for precision in precisions:
        path = out_dir / f"{onnx_path.stem}_{SUFFIXES[precision]}.tflite"
        if not path.is_file():
            raise ExportError(f"onnx2tf wrote no {precision} model ({path.name} missing)")
        paths[precision] = path
    return paths


def _failing_node(onnx_path: Path, log_text: str) -> str:
    """The failing ONNX node named in onnx2tf's error log, as " at ONNX node N (op, near layer L)" (or "")."""
    import re

    import onnx

    from pocketswap.export.onnx_export import layer_hint

    found = re.findall(r"onnx_op_name:\s+(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", log_text))
    if not found:
        return ""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    node = next((n for n in graph.node if n.name == found[-1]), None)
    return f" at ONNX node '{found[-1]}'" + (
        f" ({node.op_type}, {layer_hint(graph, node)})" if node is not None else ""
    )


def _write_sample_file(path: Path, crops: np.ndarray) -> None:
    import cv2

    crops = np.asarray(crops)
    picks = [crops[i % len(crops)] for i in range(20)]
    data = np.stack([cv2.resize(c, (128, 128), interpolation=cv2.INTER_AREA) for c in picks]).astype(np.float32) / 255.0
    np.save(path, data)


# -- flatbuffer editing --------------------------------------------------------------------------


def finalize(path: str | Path, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """Rename I/O tensors, order them as given and write one ``serving_default`` signature.

    inputs/outputs: our name -> position in the subgraph's input/output list (all of them, in our order).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    path = Path(path)
    model = fbu.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph = model.subgraphs[0]
    sig = schema.SignatureDefT()
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    sig.inputs, sig.outputs = [], []
    for names, indices, maps in ((inputs, graph.inputs, sig.inputs), (outputs, graph.outputs, sig.outputs)):
        for name, position in names.items():
            tensor_index = int(indices[position])
            graph.tensors[tensor_index].name = name
            entry = schema.TensorMapT()
            entry.name = name
            entry.tensorIndex = tensor_index
            maps.append(entry)
    model.signatureDefs = [sig]
    # subgraph I/O in our order too, so index-based app code sees e.g. (swapped, mask) in every precision
    graph.inputs = [int(graph.inputs[p]) for p in inputs.values()]
    graph.outputs = [int(graph.outputs[p]) for p in outputs.values()]
    path.write_bytes(bytes(fbu.convert_object_to_bytearray(model)))


def io_details(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as ``{name, shape, dtype}`` in subgraph order."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def describe(index: int) -> dict:
        t = graph.Tensors(index)
        return {
            "name": t.Name().decode(),
            "shape": [int(s) for s in t.ShapeAsNumpy()],
            "dtype": names[t.Type()].lower().replace("float", "float"),
        }

    return (
        [describe(int(i)) for i in graph.InputsAsNumpy()],
        [describe(int(i)) for i in graph.OutputsAsNumpy()],
    )


def list_ops(path: str | Path) -> dict[str, int]:
    """Op type -> count from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return dict(sorted(counts.items()))


def _structural_suspects(path: str | Path) -> list[str]:
    """Ops XNNPACK refuses for structural reasons: convs whose filter is computed at run time,
    concatenations with more than 4 inputs."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    producers = {}
    for i in range(graph.OperatorsLength()):
        for o in graph.Operators(i).OutputsAsNumpy():
            producers[int(o)] = i

    def op_name(i: int) -> str:
        oc = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        return names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM")

    runtime_filters, wide_concats = 0, 0
    for i in range(graph.OperatorsLength()):
        name, inputs = op_name(i), graph.Operators(i).InputsAsNumpy()
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            src = producers.get(int(inputs[1]))
            if src is not None and op_name(src) != "DEQUANTIZE":  # fp16 weights arrive through a DEQUANTIZE
                runtime_filters += 1
        elif name == "CONCATENATION" and len(inputs) > 4:
            wide_concats += 1
    out = []
    if runtime_filters:
        out.append(f"{runtime_filters} conv(s) with a runtime filter")
    if wide_concats:
        out.append(f"{wide_concats} CONCATENATION(s) with more than 4 inputs")
    return out


def delegation(path: str | Path, num_threads: int = 1) -> dict:
    """``{fully_accelerated, ops, suspect_ops}``: LiteRT's verdict for CPU (XNNPACK) and, when it is not
    fully delegated, the ops that are likely to blame (not in XNNPACK's list, runtime conv filters)."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    ops = list_ops(path)
    with captured_output("LiteRT"):
        model = CompiledModel.from_file(
            str(path),
            options=Options(
                hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=num_threads)
            ),
        )
        full = bool(model.is_fully_accelerated())
        del model  # its accelerators log on destruction
    suspects = sorted(op for op in ops if op not in XNNPACK_FLOAT_OPS) + _structural_suspects(path)
    result = {"delegate": "XNNPACK (LiteRT CPU)", "fully_accelerated": full, "suspect_ops": [] if full else suspects}
    if not full:
        log.warning(
            "%s is not fully delegated to XNNPACK; likely ops: %s", Path(path).name, ", ".join(suspects) or "unknown"
        )
    return result


# -- running -------------------------------------------------------------------------------------


def benchmark_command(
    path: str | Path, num_threads: int = 1, result_json: str | Path = "r.json", num_runs: int = 50
) -> list[str]:
    """The LiteRT benchmark tool's command line."""
    return [
        sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(path),
        "--num_threads", str(num_threads), "--num_runs", str(num_runs), "--result_json", str(result_json),
    ]  # fmt: skip


def benchmark(path: str | Path, num_threads: int = 1, num_runs: int = 50, timeout: float = 600) -> dict:
    """Run LiteRT's benchmark tool in a subprocess; returns its JSON (latency in ms, fully_accelerated)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.run(
            benchmark_command(path, num_threads, result, num_runs),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not result.is_file():
            raise ExportError(
                f"LiteRT benchmark failed on {path}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
            )
        return read_json(result, "LiteRT benchmark result", error=ExportError)
