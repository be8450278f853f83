"""Artifact manifests: the JSON file written next to every exported model (shared by export, benchmarks, demo).

An artifact ``DIR/nano_baked_fp16.tflite`` gets ``DIR/nano_baked_fp16.tflite.json`` (a ``.mlpackage``
directory gets ``NAME.mlpackage.json`` beside it). The manifest tells app code how to feed the model
(tensor names, shapes, layout, dtype; the typed ``swap_spec``: crop, normalisation, rules), what it is
(preset, precision, identity mode, source checkpoint hash, pocketswap version), how good the conversion
is (parity figures against PyTorch), what it runs on (op list, delegation) and, for baked TFLite/CoreML
students, where the identity-dependent weights live so that ``pocketswap export patch`` (or an app)
can switch identity by rewriting bytes.

Fields (``Manifest.to_dict()``; unknown keys are kept in ``extra`` when read back):

- ``format`` ("pocketswap-artifact"), ``format_version`` (1), ``artifact`` (file name), ``kind``
  ("student" | "identity_encoder" | "hypernetwork"), ``runtime`` ("tflite" | "coreml" | "onnx"),
  ``precision`` ("fp32" | "fp16" | "int8"), ``identity_mode`` ("baked" | "dynamic" | null).
- ``preset``, ``crop_size``, ``template`` and ``template_points`` (5x2 crop pixels, ArcFace order).
- ``inputs`` / ``outputs``: lists of ``{name, shape, dtype, layout, range, description}``.
- ``parity``: ``{reference, tolerance, passed, cases: [{case, output, max_abs, mean_abs, psnr_db, scale}]}``;
  an fp16 ``tolerance`` holds its rule (u = 2^-11, the network's ``depth`` and ``roundings``) and absolute
  ``per_output: {name: {scale, mean_abs, max_abs}}`` bounds, and the record ``bound_used`` (the largest share of
  a bound any case used; see :mod:`pocketswap.export.parity`).
- ``file_size_bytes``, ``sha256`` (of the file, or of a ``.mlpackage``'s files in sorted order).
- ``source``: ``{checkpoint, checkpoint_sha256, identity}``; ``identity`` is the baked identity's record
  (:class:`pocketswap.core.identity.Identity`: name, source photo, encoder, embedding and its hash, and the
  aligned face when it was stored), so a consumer can tell whether a photo shows the same person.
- ``ops`` (op type -> count), ``delegation`` (TFLite: ``{fully_accelerated, partitions, suspect_ops}``).
- ``patch``: null or ``{kind, unpatched_sha256, tensors: [{name, offset, nbytes, dtype, shape, permutation, ...}]}``.
- ``identity_texture``: null, or for students that read the warped identity (input ``identity_warped``)
  ``{size, png_base64, landmarks, triangles, outside_mesh, shape}``: the aligned identity crop (PNG), its 468
  landmarks (x, y crop pixels), the fixed triangles of its mesh (landmark indices) and how far the frame's
  landmarks move to its face shape; ``swap_spec.identity_warp`` says how a frame draws it.
- ``swap_spec`` (students; :class:`pocketswap.core.spec.SwapSpec` in memory): the pre- and post-processing as
  data, so that a client needs nothing else: ``front_end`` (the landmark models and their ROI recipe), ``crop`` (the landmark indices averaged into each of
  the 5 keypoints, the fit, size, template and its points, resampling, border), ``normalization`` (``scale``, ``offset``) and
  ``paste`` (the alpha's edge ramp, the CIELAB colour transfer's formula, region, eps and minimum, resampling to
  the frame, the fine-detail rule, the blend), ``identity_warp`` (shape transfer, raster rule) and ``video``
  (tracking, smoothing, clock); see :mod:`pocketswap.faces.spec` and ``examples/client.py``.
- ``converters`` (tool versions), ``pocketswap_version``, ``created_utc``, ``notice``, ``extra``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pocketswap import __version__
from pocketswap.core.errors import ConfigError, PocketswapError
from pocketswap.core.files import atomic_write_json
from pocketswap.core.identity import LANDMARK_COUNT, Identity
from pocketswap.core.jsonio import Obj, check_schema, read_json
from pocketswap.core.spec import SpecError, SwapSpec

FORMAT = "pocketswap-artifact"
FORMAT_VERSION = 1
SUFFIX = ".json"
KINDS = ("student", "identity_encoder", "hypernetwork")
RUNTIMES = ("tflite", "coreml", "onnx")
PRECISIONS = ("fp32", "fp16", "int8")
IDENTITY_MODES = ("baked", "dynamic")
# Tensor names of every student artifact (ONNX names, TFLite signature and tensor names, CoreML features).
IMAGE_INPUT = "image"
IDENTITY_INPUT = "identity"
WARPED_IDENTITY_INPUT = "identity_warped"
IMAGE_OUTPUT = "swapped"
MASK_OUTPUT = "mask"
STUDENT_OUTPUTS = (IMAGE_OUTPUT, MASK_OUTPUT)
SYNTHETIC_MEDIA_NOTICE = (
    "This model generates synthetic media (face swaps). Disclose that its outputs are synthetic, "
    "obtain consent from the people whose faces are used, and do not use it to deceive, impersonate or harass."
)


class ManifestError(PocketswapError):
    """A manifest is missing, unreadable or not a pocketswap artifact manifest."""


# The types of every field a reader uses (pocketswap.core.jsonio's schema): one check, named by field, for
# every reader (demo, app, bench, export patch), so a manifest that one accepts no other refuses.
_TENSOR = Obj(
    {"name": str, "shape": [(int, None)], "dtype": str, "layout": str, "range": ([float], None), "description": str},
    required=("name", "shape", "dtype", "layout"),
    closed=True,  # TensorInfo has no room for other keys
)
_PARITY = {
    "reference": str, "precision": str, "tolerance": dict, "passed": bool, "max_abs": float, "mean_abs": float,
    "min_psnr_db": (float, None), "min_psnr_db_real_faces": (float, None),
    "cases": [{"case": str, "output": str, "max_abs": float, "mean_abs": float, "psnr_db": (float, None)}],
}  # fmt: skip
_PATCH_TENSOR = Obj(
    {"name": str, "offset": int, "nbytes": int, "dtype": str, "shape": [int], "torch_shape": [int],
     "permutation": [int], "stored_as": (str, None)},
    required=("name", "offset", "nbytes", "dtype", "torch_shape", "permutation"),
)  # fmt: skip
SCHEMA = Obj(
    {
        "format": str, "format_version": int, "artifact": str, "kind": str, "runtime": str, "precision": str,
        "inputs": [_TENSOR], "outputs": [_TENSOR], "identity_mode": (str, None), "preset": (str, None),
        "crop_size": (int, None), "template": (str, None), "template_points": ([[float]], None), "parity": _PARITY,
        "file_size_bytes": int, "sha256": str,
        "source": {"checkpoint": (str, None), "checkpoint_sha256": (str, None), "identity": (dict, str, None),
                   "encoder": (str, None)},
        "ops": Obj(values=int), "delegation": ({"delegate": str, "fully_accelerated": bool, "suspect_ops": list},
                                               None),
        "patch": ({"kind": str, "file": (str, None), "unpatched_sha256": str, "tensors": [_PATCH_TENSOR]}, None),
        "identity_texture": (dict, None), "swap_spec": (dict, None), "converters": Obj(values=(str, None)),
        "pocketswap_version": str, "created_utc": str, "notice": str, "extra": dict,
    },
    required=("artifact", "kind", "runtime", "precision", "inputs", "outputs"),
)  # fmt: skip


@dataclass
class TensorInfo:
    """One model input or output as app code sees it."""

    name: str
    shape: list[int]
    dtype: str  # numpy-style name: float32, float16, int8, uint8, image (CoreML image type)
    layout: str  # NHWC, NCHW, NC (flat vector) ...
    range: list[float] | None = None  # value range, e.g. [-1, 1]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Manifest:
    """Everything an app or a later stage needs to know about one exported file."""

    artifact: str
    kind: str
    runtime: str
    precision: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    identity_mode: str | None = None
    preset: str | None = None
    crop_size: int | None = None
    template: str | None = None
    template_points: list[list[float]] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    file_size_bytes: int = 0
    sha256: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    delegation: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    identity_texture: dict[str, Any] | None = None
    swap_spec: SwapSpec | None = None
    converters: dict[str, str] = field(default_factory=dict)
    pocketswap_version: str = __version__
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    notice: str = SYNTHETIC_MEDIA_NOTICE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ManifestError(f"manifest field 'kind' must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.runtime not in RUNTIMES:
            raise ManifestError(f"manifest field 'runtime' must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"manifest field 'precision' must be one of {', '.join(PRECISIONS)}")
        if self.identity_mode not in (None, *IDENTITY_MODES):
            raise ManifestError(
                f"manifest field 'identity_mode' must be baked, dynamic or null, got {self.identity_mode!r}"
            )
        self.inputs = [t if isinstance(t, TensorInfo) else TensorInfo(**t) for t in self.inputs]
        self.outputs = [t if isinstance(t, TensorInfo) else TensorInfo(**t) for t in self.outputs]
        if isinstance(self.swap_spec, dict):
            try:
                self.swap_spec = SwapSpec.from_dict(self.swap_spec, "manifest", self.template)
            except SpecError as exc:
                raise ManifestError(str(exc)) from exc

    def identity(self) -> Identity | None:
        """The baked identity (``source["identity"]``), None for a dynamic or an unnamed one."""
        record = (self.source or {}).get("identity")
        if not isinstance(record, dict):  # None, or the name-only string of older manifests
            return None
        try:
            return Identity.from_record(record, f"{self.artifact}: field 'source.identity'")
        except ConfigError as exc:
            raise ManifestError(str(exc)) from exc

    def input(self, name: str) -> TensorInfo:
        return _by_name(self.inputs, name, "input")

    def output(self, name: str) -> TensorInfo:
        return _by_name(self.outputs, name, "output")

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("inputs", "outputs"):
                value = [t.to_dict() for t in value]
            elif isinstance(value, SwapSpec):
                value = value.to_dict()
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{where} is not a pocketswap artifact manifest (field 'format' != {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{where}: field 'format_version' is {data.get('format_version')!r}; expected {FORMAT_VERSION}"
            )
        check_schema(data, SCHEMA, where, error=ManifestError)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known and k not in ("format", "format_version")})
        return cls(**kwargs, extra=extra)


def _by_name(tensors: list[TensorInfo], name: str, what: str) -> TensorInfo:
    for t in tensors:
        if t.name == name:
            return t
    raise ManifestError(f"no {what} named {name!r}; the model has {', '.join(t.name for t in tensors)}")


def manifest_path(artifact: str | Path) -> Path:
    """``model.tflite`` -> ``model.tflite.json`` (also for ``.mlpackage`` directories); a ``.json`` is returned as is."""
    artifact = Path(artifact)
    return artifact if artifact.suffix == SUFFIX else artifact.with_name(artifact.name + SUFFIX)


def write_manifest(artifact: str | Path, manifest: Manifest) -> Path:
    """Write the manifest next to ``artifact`` atomically; returns its path."""
    return atomic_write_json(manifest_path(artifact), manifest.to_dict())


def read_manifest(path: str | Path) -> Manifest:
    """Read the manifest of an artifact (pass the artifact or the ``.json`` itself)."""
    path = manifest_path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path} (every exported artifact has one next to it)")
    return Manifest.from_dict(read_json(path, "manifest", error=ManifestError), where=str(path))


class Texture(NamedTuple):
    """A manifest's identity texture: the aligned crop (SxSx3 uint8 RGB), its landmarks ((468, 2) float32
    crop pixels) and the fixed triangles of its mesh ((T, 3) int32 landmark indices; None in manifests
    written before they were stored: then the Delaunay triangulation of the landmarks) and how far the frame's
    landmarks move to its face shape before the warp (0.0 in manifests written before it was stored)."""

    crop: Any
    landmarks: Any
    triangles: Any
    shape: float = 0.0


def encode_texture(crop: Any, landmarks: Any, triangles: Any, shape: float) -> dict[str, Any]:
    """The manifest's ``identity_texture`` for an SxSx3 uint8 RGB crop, its (468, 2+) landmarks, the
    (T, 3) triangles of the mesh the warp moves it by and the student's ``identity_shape``."""
    import numpy as np

    from pocketswap.core.errors import OutputError
    from pocketswap.core.imageio import png_base64

    try:
        png = png_base64(crop)
    except OutputError as exc:
        raise ManifestError(f"cannot encode the identity texture: {exc}") from exc
    points = np.round(np.asarray(landmarks, np.float64)[:, :2], 3).tolist()
    return {
        "size": int(crop.shape[0]),
        "png_base64": png,
        "landmarks": points,
        "triangles": np.asarray(triangles, np.int64).tolist(),
        "outside_mesh": "texture",  # pixels outside the triangles keep the texture's own
        "shape": float(shape),  # the frame's landmarks move this far to the texture's face shape first
    }


def decode_texture(texture: dict[str, Any], where: str = "manifest") -> Texture:
    """The :class:`Texture` of a manifest's ``identity_texture``."""
    import numpy as np

    from pocketswap.core.errors import ImageReadError
    from pocketswap.core.imageio import from_png_base64

    field = f"{where}: field 'identity_texture'"
    try:
        size = int(texture["size"])
        landmarks = np.asarray(texture["landmarks"], np.float32)
        triangles = texture.get("triangles")
        triangles = None if triangles is None else np.asarray(triangles, np.int64)
        shape = float(texture.get("shape", 0.0))
        crop = from_png_base64(texture["png_base64"], field, size)  # bigger than its stated size: refused
    except (KeyError, TypeError, ValueError, ImageReadError) as exc:
        raise ManifestError(f"{field} is malformed ({exc})") from exc
    if landmarks.shape != (LANDMARK_COUNT, 2) or not np.isfinite(landmarks).all():
        raise ManifestError(
            f"{field}: 'landmarks' must be {LANDMARK_COUNT} finite (x, y) points, got {landmarks.shape}"
        )
    if triangles is not None and (
        triangles.ndim != 2 or triangles.shape[1:] != (3,) or len(triangles) == 0
        or triangles.min() < 0 or triangles.max() >= LANDMARK_COUNT
    ):  # fmt: skip
        raise ManifestError(f"{field}: 'triangles' must be (T, 3) indices of its {LANDMARK_COUNT} landmarks")
    if not 0.0 <= shape <= 1.0:
        raise ManifestError(f"{field}: 'shape' must be in [0, 1], got {shape!r}")
    return Texture(crop, landmarks, None if triangles is None else triangles.astype(np.int32), shape)


def artifact_size(path: str | Path) -> int:
    """Bytes of a file, or the total of a directory's files."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SCHEMA",
    "SYNTHETIC_MEDIA_NOTICE",
    "Manifest",
    "ManifestError",
    "TensorInfo",
    "Texture",
    "artifact_size",
    "decode_texture",
    "encode_texture",
    "manifest_path",
    "read_manifest",
    "write_manifest",
]
