"""PyTorch -> CoreML ML Program (.mlpackage, iOS 16+) with coremltools, plus Linux-side validation.

- Traced with ``torch.jit.trace``; named inputs/outputs (otherwise outputs get op names like ``var_15``).
- Compute precision FLOAT16 (fp16, int8) or FLOAT32 (fp32); float32 tensor I/O so Swift code can pass
  ``MLMultiArray(.float32)``. ``image_input=True`` makes ``image`` a CoreML image (RGB, scale 1/127.5,
  bias -1: [0, 255] pixels -> [-1, 1]) so iOS code can feed a ``CVPixelBuffer``.
- Weight compression via ``coremltools.optimize.coreml``: ``int8`` (linear symmetric, per channel),
  ``palettize6`` / ``palettize4`` (k-means look-up tables). Precision ``int8`` means int8 weights with
  fp16 activations: calibrated activation quantization needs ``predict()``, i.e. macOS.
- On Linux a model cannot ``predict()``: :func:`inspect` checks I/O, ops and size, and
  :func:`weights_parity` loads the (decompressed) weights of the artifact back into PyTorch and measures
  the output error they cause. On macOS :func:`predict` runs the model itself.
"""

from __future__ import annotations

import copy
import logging
import platform
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketswap.core.spec import PIXELS
from pocketswap.export.common import ExportError, UnsupportedError, captured_output

log = logging.getLogger(__name__)


@dataclass
class InputSpec:
    """A model input: ``image`` inputs may become CoreML image types."""

    name: str
    shape: tuple[int, ...]
    is_image: bool = False


def import_coremltools():
    """Import coremltools quietly (it imports TensorFlow and warns about untested torch/TF versions)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with captured_output("import coremltools"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
            import coremltools.optimize.coreml  # noqa: F401
    except ImportError as exc:
        raise UnsupportedError(f"CoreML export needs coremltools ({exc}); install pocketswap[export]") from exc
    return coremltools


def can_predict() -> bool:
    return platform.system() == "Darwin"


def convert(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    inputs: Sequence[InputSpec],
    output_names: Sequence[str],
    path: str | Path,
    precision: str = "fp16",
    image_input: bool = False,
    compress: str = "none",
    description: str = "",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Convert and save ``path`` (.mlpackage). ``compress``: none | int8 | palettize6 | palettize4."""
    ct = import_coremltools()

    if precision == "int8" and compress == "none":
        compress = "int8"
    if compress not in ("none", "int8", "palettize6", "palettize4"):
        raise UnsupportedError(
            f"CoreML weight compression {compress!r} is not supported (none, int8, palettize6, palettize4)"
        )
    module = module.eval()
    ct_inputs = []
    for spec in inputs:
        if spec.is_image and image_input:
            ct_inputs.append(
                ct.ImageType(
                    name=spec.name,
                    shape=spec.shape,
                    scale=PIXELS.scale,  # the students' pixel normalisation, inside the model
                    bias=[PIXELS.offset] * 3,
                    color_layout=ct.colorlayout.RGB,
                )
            )
        else:
            ct_inputs.append(ct.TensorType(name=spec.name, shape=spec.shape, dtype=np.float32))
    kwargs = {
        "convert_to": "mlprogram",
        "inputs": ct_inputs,
        "outputs": [ct.TensorType(name=n, dtype=np.float32) for n in output_names],
        "minimum_deployment_target": ct.target.iOS16,
        "compute_precision": ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        "skip_model_load": True,
    }
    errors = []
    for frontend in ("trace", "export"):  # trace first; torch.export when tracing keeps shape arithmetic
        try:
            level = logging.DEBUG if frontend == "trace" else logging.ERROR
            with captured_output(f"coremltools ({frontend})", level), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = (
                    torch.jit.trace(module, example_inputs)
                    if frontend == "trace"
                    else torch.export.export(module, example_inputs).run_decompositions({})
                )
                model = _compress(ct.convert(graph, **kwargs), compress)
            break
        except (RuntimeError, NotImplementedError, ValueError, TypeError, AssertionError) as exc:
            errors.append(f"{frontend}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            log.info(
                "coremltools via torch.jit.%s failed (%s)%s",
                frontend,
                errors[-1],
                "; trying torch.export" if frontend == "trace" else "",
            )
    else:
        raise ExportError(f"coremltools could not convert {type(module).__name__}: {'; '.join(errors)}")
    model.short_description = description
    model.author = "pocketswap"
    for key, value in (metadata or {}).items():
        model.user_defined_metadata[key] = str(value)
    with captured_output("coremltools save"):
        model.save(str(path))
    return Path(path)


def _compress(model, compress: str):
    import coremltools.optimize.coreml as cto

    if compress == "none":
        return model
    if compress == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
        return cto.linear_quantize_weights(model, config)
    nbits = int(compress.removeprefix("palettize"))
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    return cto.palettize_weights(model, config)


def inspect(path: str | Path) -> dict:
    """What can be checked without macOS: I/O names/types/shapes, MIL op counts, spec version."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    ops: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations if op.type != "const")
    return {
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "ops": dict(sorted(ops.items())),
        "specification_version": int(spec.specificationVersion),
        "is_ml_program": spec.WhichOneof("Type") == "mlProgram",
    }


def _feature(feature) -> dict:
    kind = feature.type.WhichOneof("Type")
    if kind == "imageType":
        t = feature.type.imageType
        return {"name": feature.name, "type": "image", "shape": [1, 3, int(t.height), int(t.width)], "color": "RGB"}
    t = feature.type.multiArrayType
    dtypes = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
    return {
        "name": feature.name,
        "type": dtypes.get(int(t.dataType), str(t.dataType)),
        "shape": [int(s) for s in t.shape],
    }


def artifact_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every constant weight of the .mlpackage, decompressed (LUT / int8 expanded), by MIL name."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    with captured_output("coremltools"):
        model = ct.models.MLModel(str(path), skip_model_load=True)
        model = cto.decompress_weights(model)
        meta = cto.get_weights_metadata(model, weight_threshold=0)
    return {name: np.asarray(m.val, np.float32) for name, m in meta.items() if np.asarray(m.val).dtype.kind == "f"}


def _mil_key(name: str) -> str:
    """MIL const name -> sanitised torch name (``p_``/``b_`` prefixes come from the torch.export frontend)."""
    for suffix in ("_palettized", "_quantized", "_to_fp16"):
        name = name.removesuffix(suffix)
    return name


def with_artifact_weights(module: nn.Module, path: str | Path) -> tuple[nn.Module, int, list[str]]:
    """A copy of ``module`` whose parameters/buffers are replaced by the .mlpackage's (decompressed) weights.

    Returns (module, tensors replaced, torch tensors not found in the artifact).
    """
    weights = {}
    for key, value in artifact_weights(path).items():
        key = _mil_key(key)
        weights[key] = value
        if key[:2] in ("p_", "b_", "c_"):
            weights.setdefault(key[2:], value)
    clone = copy.deepcopy(module).eval()
    state = clone.state_dict()
    missing, replaced = [], 0
    for name, value in state.items():
        found = weights.get(name.replace(".", "_"))
        if not value.is_floating_point():
            continue
        if found is None or found.size != value.numel():
            if bool(value.any()):  # all-zero biases are dropped by the converter: nothing to compare
                missing.append(name)
            continue
        state[name] = torch.from_numpy(found.reshape(tuple(value.shape)).copy())
        replaced += 1
    clone.load_state_dict(state)
    return clone, replaced, missing


def predict(path: str | Path, feeds: dict[str, np.ndarray], image_input: bool = False) -> dict[str, np.ndarray]:
    """Run the .mlpackage with CoreML (macOS only). Image inputs are given as NCHW floats in [-1, 1]."""
    if not can_predict():
        raise UnsupportedError("CoreML predict() runs only on macOS")
    import coremltools as ct
    from PIL import Image

    model = ct.models.MLModel(str(path))
    image_names = {f["name"] for f in inspect(path)["inputs"] if f["type"] == "image"}
    data = {}
    for name, value in feeds.items():
        if name in image_names:
            pixels = PIXELS.to_pixels(value[0].transpose(1, 2, 0))
            data[name] = Image.fromarray(pixels)
        else:
            data[name] = value.astype(np.float32)
    return {k: np.asarray(v, np.float32) for k, v in model.predict(data).items()}
