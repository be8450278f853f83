"""Fast identity switch (``patch_model``): rewrite the identity-dependent weight bytes of a baked .tflite / .mlpackage.

At export time :func:`map_tflite` / :func:`map_coreml` find, for every PyTorch tensor that depends on
the identity (found by baking two identities and diffing), the constant that holds it in the artifact
(matching values after the converter's layout transpose: OHWI / 1HWC for TFLite convs, OIHW for CoreML;
fp16 where the artifact is fp16). The result goes into the manifest's ``patch`` record: byte offset,
byte count, dtype, torch shape and the permutation from the torch layout. :func:`patch_artifact` then
bakes the new identity in PyTorch and overwrites those bytes -- no conversion, ~milliseconds. An app
can do the same with the manifest and a hypernetwork artifact that outputs the tensors (see enroll.py).

``unpatched_sha256`` hashes the file with every patched region zeroed, so a patched file can be
patched again and a different model is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketswap.core.checkpoint import checkpoint_encoder, checkpoint_identity, locked_identity
from pocketswap.core.errors import CheckpointError, ConfigError, OutputError
from pocketswap.core.files import atomic_write_bytes, check_output, file_sha256, replace_dir
from pocketswap.core.identity import Identity
from pocketswap.core.manifest import (
    IMAGE_INPUT,
    STUDENT_OUTPUTS,
    Manifest,
    artifact_size,
    read_manifest,
    write_manifest,
)
from pocketswap.core.runners import TFLiteRunner
from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.export.common import ExportError, UnsupportedError
from pocketswap.faces.identity import read_identity, same_person_threshold

log = logging.getLogger(__name__)

COREML_WEIGHTS = Path("Data/com.apple.CoreML/weights/weight.bin")
_BLOB_SENTINEL = 0xDEADBEEF


# -- which tensors depend on the identity --------------------------------------------------------


@torch.no_grad()
def identity_dependent_names(net: torch.nn.Module) -> list[str]:
    """Names of the baked student's tensors that change with the identity (two random bakes diffed)."""
    gen = torch.Generator().manual_seed(1234)
    dim = net.config.embed_dim
    a = net.bake(torch.randn(1, dim, generator=gen)).state_dict()
    b = net.bake(torch.randn(1, dim, generator=gen)).state_dict()
    return [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]


@torch.no_grad()
def baked_identity_tensors(net: torch.nn.Module, embedding: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """The identity-dependent tensors of ``net.bake(embedding)`` (PyTorch layout, float32)."""
    state = net.bake(embedding.reshape(1, -1)).state_dict()
    return {k: state[k].detach().cpu().numpy().astype(np.float32) for k in names}


# -- mapping -------------------------------------------------------------------------------------


def _candidate_perms(shape: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[int, ...]]:
    squeezed = tuple(s for s in target if s != 1)
    perms = []
    for perm in itertools.permutations(range(len(shape))):
        if tuple(s for s in (shape[p] for p in perm) if s != 1) == squeezed:
            perms.append(perm)
    return perms


def _matches(stored: np.ndarray, expected: np.ndarray) -> bool:
    expected_cast = expected.astype(stored.dtype).astype(np.float32)
    scale = float(np.abs(expected).max()) or 1.0
    tol = 1e-6 * scale if stored.dtype == np.float32 else 2e-3 * scale
    return bool(np.abs(stored.astype(np.float32) - expected_cast).max() <= tol)


def _find(name: str, value: np.ndarray, constants: list[dict]) -> dict:
    hits = []
    for const in constants:
        if const["numel"] != value.size:
            continue
        stored = const["read"]()
        for perm in _candidate_perms(value.shape, tuple(const["shape"])):
            if _matches(stored.reshape(-1), np.transpose(value, perm).reshape(-1)):
                hits.append({**const, "permutation": list(perm)})
                break
    if len(hits) != 1:
        reason = "not found" if not hits else f"found {len(hits)} times"
        raise UnsupportedError(f"identity tensor '{name}' {reason} in the converted model; it cannot be patched")
    hit = hits[0]
    return {
        "name": name,
        "stored_as": hit["stored_as"],
        "offset": hit["offset"],
        "nbytes": hit["nbytes"],
        "dtype": hit["dtype"],
        "torch_shape": list(value.shape),
        "shape": list(hit["shape"]),
        "permutation": hit["permutation"],
    }


def _tflite_constants(data: bytes) -> list[dict]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    users: dict[int, int] = {}
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for t in range(g.TensorsLength()):
            users[g.Tensors(t).Buffer()] = users.get(g.Tensors(t).Buffer(), 0) + 1
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
    out = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        dtype = dtypes.get(tensor.Type())
        buffer = model.Buffers(tensor.Buffer())
        if dtype is None or users.get(tensor.Buffer(), 0) != 1:
            continue
        if buffer.Offset() > 1:  # large models keep buffers outside the flatbuffer
            offset, nbytes = int(buffer.Offset()), int(buffer.Size())
        elif buffer.DataLength() > 0:
            offset, nbytes = buffer._tab.Vector(buffer._tab.Offset(4)), int(buffer.DataLength())
        else:
            continue
        shape = [int(s) for s in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        out.append(
            {
                "stored_as": tensor.Name().decode(),
                "offset": int(offset),
                "nbytes": nbytes,
                "dtype": np.dtype(dtype).name,
                "shape": shape,
                "numel": nbytes // np.dtype(dtype).itemsize,
                "read": lambda o=offset, n=nbytes, d=dtype: np.frombuffer(data, d, n // np.dtype(d).itemsize, o),
            }
        )
    return out


def map_tflite(path: str | Path, tensors: dict[str, np.ndarray]) -> dict:
    """The manifest ``patch`` record of a baked fp32/fp16 .tflite (raises UnsupportedError if a tensor is missing)."""
    data = Path(path).read_bytes()
    constants = _tflite_constants(data)
    entries = [_find(name, value, constants) for name, value in tensors.items()]
    _check_disjoint(entries)
    return {"kind": "tflite", "file": None, "unpatched_sha256": _structure_hash(data, entries), "tensors": entries}


def _coreml_constants(package: Path) -> list[dict]:
    from pocketswap.export.coreml import import_coremltools

    ct = import_coremltools()
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(package))
    blob = (package / COREML_WEIGHTS).read_bytes()
    dtypes = {MIL_pb2.DataType.FLOAT16: np.float16, MIL_pb2.DataType.FLOAT32: np.float32}
    out = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type != "const" or not op.attributes["val"].HasField("blobFileValue"):
                    continue
                value = op.attributes["val"]
                dtype = dtypes.get(value.type.tensorType.dataType)
                if dtype is None:
                    continue
                sentinel, _, nbytes, data_offset = struct.unpack_from("<IIQQ", blob, value.blobFileValue.offset)
                if sentinel != _BLOB_SENTINEL:
                    raise ExportError(f"{package.name}: unexpected weight blob header at {value.blobFileValue.offset}")
                shape = [int(d.constant.size) for d in value.type.tensorType.dimensions]
                out.append(
                    {
                        "stored_as": op.outputs[0].name,
                        "offset": int(data_offset),
                        "nbytes": int(nbytes),
                        "dtype": np.dtype(dtype).name,
                        "shape": shape,
                        "numel": int(nbytes) // np.dtype(dtype).itemsize,
                        "read": lambda o=data_offset, n=nbytes, d=dtype: np.frombuffer(
                            blob, d, n // np.dtype(d).itemsize, o
                        ),
                    }
                )
    return out


def map_coreml(package: str | Path, tensors: dict[str, np.ndarray]) -> dict:
    """The ``patch`` record of an uncompressed .mlpackage (offsets into ``weights/weight.bin``)."""
    package = Path(package)
    constants = _coreml_constants(package)
    entries = [_find(name, value, constants) for name, value in tensors.items()]
    _check_disjoint(entries)
    blob = (package / COREML_WEIGHTS).read_bytes()
    return {
        "kind": "coreml",
        "file": str(COREML_WEIGHTS),
        "unpatched_sha256": _structure_hash(blob, entries),
        "tensors": entries,
    }


def _check_disjoint(entries: list[dict]) -> None:
    spans = sorted((e["offset"], e["offset"] + e["nbytes"], e["name"]) for e in entries)
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise UnsupportedError(f"identity tensors '{a}' and '{b}' share bytes in the converted model; cannot patch")


def _structure_hash(data: bytes | bytearray, entries: list[dict]) -> str:
    buf = bytearray(data)
    for e in entries:
        buf[e["offset"] : e["offset"] + e["nbytes"]] = bytes(e["nbytes"])
    return hashlib.sha256(buf).hexdigest()


# -- patching ------------------------------------------------------------------------------------


def encode(entry: dict, value: np.ndarray) -> bytes:
    """A torch-layout tensor as the artifact stores it (transposed, cast)."""
    if list(value.shape) != entry["torch_shape"]:
        raise ExportError(
            f"tensor '{entry['name']}' has shape {list(value.shape)}, the model stores {entry['torch_shape']}"
        )
    data = np.ascontiguousarray(np.transpose(value, entry["permutation"]).astype(entry["dtype"])).tobytes()
    if len(data) != entry["nbytes"]:
        raise ExportError(f"tensor '{entry['name']}' encodes to {len(data)} bytes, the model holds {entry['nbytes']}")
    return data


def patch_bytes(data: bytes | bytearray, record: dict, tensors: dict[str, np.ndarray]) -> bytearray:
    """``data`` (the .tflite, or the .mlpackage's weight.bin) with the identity tensors replaced."""
    if _structure_hash(data, record["tensors"]) != record["unpatched_sha256"]:
        raise ExportError("the model does not match its manifest (different export or modified file); cannot patch it")
    out = bytearray(data)
    for entry in record["tensors"]:
        out[entry["offset"] : entry["offset"] + entry["nbytes"]] = encode(entry, tensors[entry["name"]])
    return out


def patch_artifact(src: str | Path, dst: str | Path, record: dict, tensors: dict[str, np.ndarray]) -> float:
    """Write ``dst``: ``src`` (a .tflite or .mlpackage) with new identity tensors. Returns seconds spent rewriting."""
    src, dst = Path(src), Path(dst)
    if record["kind"] == "tflite":
        start = time.perf_counter()
        data = patch_bytes(src.read_bytes(), record, tensors)
        elapsed = time.perf_counter() - start
        atomic_write_bytes(dst, bytes(data))
        return elapsed
    if record["kind"] == "coreml":
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copytree(src, tmp)
            start = time.perf_counter()
            weights = tmp / record["file"]
            weights.write_bytes(bytes(patch_bytes(weights.read_bytes(), record, tensors)))
            elapsed = time.perf_counter() - start
            replace_dir(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return elapsed
    raise UnsupportedError(f"unknown patch kind {record['kind']!r}")


def read_tensor(data: bytes, entry: dict) -> np.ndarray:
    """Read one mapped tensor back in the PyTorch layout (for checks)."""
    stored = np.frombuffer(data, entry["dtype"], entry["nbytes"] // np.dtype(entry["dtype"]).itemsize, entry["offset"])
    shape = [entry["torch_shape"][p] for p in entry["permutation"]]
    return np.transpose(stored.reshape(shape), np.argsort(entry["permutation"])).astype(np.float32)


# -- a baked artifact for another identity -------------------------------------------------------


@dataclass
class PatchResult:
    """A patched artifact, its manifest, the time spent rewriting bytes and the parity record."""

    path: Path
    manifest: Manifest
    rewrite_seconds: float
    parity: dict


def patch_model(
    model: str | Path,
    identity: str | Path | Identity,
    checkpoint: str | Path,
    out: str | Path,
    encoder: str | None = None,
    check_parity: bool = True,
) -> PatchResult:
    """Write ``out``: a baked .tflite / .mlpackage with the identity switched (no re-conversion)."""
    model = Path(model)
    if Path(out).suffix != model.suffix:
        raise OutputError(f"--out {out}: give a {model.suffix} file name (the patched copy of {model.name})")
    if model.suffix != ".mlpackage":
        check_output(out, (model.suffix,), "--out", create=False)
    manifest = read_manifest(model)
    if manifest.kind != "student" or manifest.identity_mode != "baked":
        raise UnsupportedError(
            f"{model.name}: only baked student models can be patched (this is {manifest.kind}/{manifest.identity_mode})"
        )
    if not manifest.patch:
        raise UnsupportedError(
            f"{model.name}: its manifest has no patch map ({manifest.runtime} {manifest.precision}); "
            "patching needs a baked fp32/fp16 .tflite or an uncompressed .mlpackage"
        )
    net, config, extra, ckpt_dir, ckpt_sha = export_data.load_student(checkpoint)
    if config.identity_encoder:
        raise UnsupportedError(f"{checkpoint}: spatial-identity students are re-exported per identity, not patched")
    if manifest.source.get("checkpoint_sha256") not in (None, ckpt_sha):
        raise CheckpointError(f"{checkpoint}: not the checkpoint {model.name} was exported from (sha256 differs)")
    encoder_name = checkpoint_encoder(extra, config.embed_dim, encoder or manifest.source.get("encoder"))
    given = identity if isinstance(identity, Identity) else read_identity(identity, config.embed_dim, encoder_name)
    locked_identity(extra, given.embedding, given.source, same_person_threshold(encoder_name))
    baked = checkpoint_identity(extra) or given  # a personalised checkpoint bakes its own
    emb = baked.embedding
    names = [e["name"] for e in manifest.patch["tensors"]]
    tensors = baked_identity_tensors(net, torch.from_numpy(emb), names)
    out = Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError("--out must differ from the model being patched")
    seconds = patch_artifact(model, out, manifest.patch, tensors)
    log.info("patched %d tensors of %s in %.1f ms", len(names), model.name, seconds * 1e3)

    record = _patched_parity(net, emb, config, out, manifest, check_parity)
    new = Manifest.from_dict(manifest.to_dict())
    new.artifact = out.name
    new.file_size_bytes = artifact_size(out)
    new.sha256 = file_sha256(out)
    new.source = {
        **manifest.source,
        "identity": baked.to_record(),
        "patched_from": manifest.artifact,
    }
    new.parity = record
    new.extra = {**manifest.extra, "patch_rewrite_ms": round(seconds * 1e3, 3)}
    write_manifest(out, new)
    return PatchResult(out, new, seconds, record)


def _patched_parity(net, emb, config, path: Path, manifest: Manifest, check: bool) -> dict:

    module = net.bake(torch.from_numpy(emb).reshape(1, -1))
    rng = np.random.default_rng(0)
    cases = [("random-0", {IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, config.size, config.size)).astype(np.float32)})]
    for case, crop in export_data.sample_crops(config.size, config.template)[:1]:
        cases.append((case, {IMAGE_INPUT: export_data.to_model_input(crop)}))

    @torch.no_grad()
    def reference(feeds):
        return {
            k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(torch.from_numpy(feeds[IMAGE_INPUT])), strict=True)
        }

    if manifest.runtime == "tflite":
        run, name = TFLiteRunner(path), "pytorch-fp32 (new identity)"
    else:  # Linux cannot run CoreML: check the patched weights inside PyTorch
        from pocketswap.export import coreml

        clone, _, _ = coreml.with_artifact_weights(module, path)
        run, name = (
            parity.torch_runner(clone),
            "pytorch-fp32 (new identity) vs pytorch with the patched artifact's weights",
        )
    results = parity.evaluate(cases, reference, run, parity.PEAKS)
    tolerance = parity.TOLERANCES[manifest.precision] if manifest.precision != "int8" else None
    record = parity.summarize(results, manifest.precision, name, tolerance, depth=parity.depth(module))
    if check:
        parity.check(record, path.name)
    return record
