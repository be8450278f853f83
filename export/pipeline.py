"""Library API of the export stage: ``export_model(...) -> list[Artifact]`` and ``patch_model(...)``.

Everything is built in a temp folder inside ``out_dir`` and moved into place only when every requested
artifact converted and passed parity, so a failure leaves nothing half-written. Each artifact gets a
manifest (:mod:`pocketswap.core.manifest`) next to it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketswap.core.checkpoint import checkpoint_encoder, checkpoint_identity, locked_identity
from pocketswap.core.errors import ConfigError
from pocketswap.core.files import check_output_dir
from pocketswap.core.identity import Identity
from pocketswap.core.manifest import (
    IDENTITY_INPUT,
    IDENTITY_MODES,
    IMAGE_INPUT,
    PRECISIONS,
    STUDENT_OUTPUTS,
    WARPED_IDENTITY_INPUT,
    encode_texture,
)
from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.export.common import (
    COMPRESSIONS,
    FORMATS,
    ExportError,
    UnsupportedError,
    needs_onnx,
    parse_list,
)
from pocketswap.export.enroll_export import export_enrollment
from pocketswap.export.formats import export_formats
from pocketswap.export.job import (
    CALIBRATION_LIMIT,
    NUM_RANDOM_CASES,
    Artifact,
    Job,
    ParityCases,
    StudentOrigin,
    random_embedding,
    student_tensors,
)
from pocketswap.faces.identity import read_identity, same_person_threshold
from pocketswap.faces.samples import SAMPLE_PREFIX
from pocketswap.faces.spec import swap_spec
from pocketswap.faces.warp import triangulate, warp_identity

log = logging.getLogger(__name__)

# -- the exporter --------------------------------------------------------------------------------


def export_model(
    source: str | Path,
    out_dir: str | Path,
    identity: str | Path | None = None,
    formats: str | Sequence[str] = "tflite",
    precisions: str | Sequence[str] = "fp32",
    identity_mode: str = "baked",
    calibration: str | Path | None = None,
    image_input: bool = False,
    compress: str = "none",
    encoder: str | None = None,
    enroll: bool = False,
    check_parity: bool = True,
    benchmark: bool = False,
    name: str | None = None,
) -> list[Artifact]:
    """Export a student checkpoint (or run folder) to ONNX / TFLite / CoreML; returns the artifacts written.

    identity: face photo, ``sample:NAME`` or ``.npy`` embedding (required for ``baked``; for ``dynamic`` it
    is only used for parity). formats / precisions: names or comma lists ("all" allowed). calibration: int8
    crops (dataset folder, image folder, ``.npy``, or ``samples``). compress: CoreML weight compression.
    enroll: also export the identity encoder and the hypernetwork. Raises a PocketswapError subclass on bad
    input or failed parity; nothing is left in ``out_dir`` then.
    """
    formats_l = parse_list(formats, FORMATS, "format")
    precisions_l = parse_list(precisions, PRECISIONS, "precision")
    check_output_dir(out_dir, "--out", create=False)  # before the checkpoint loads and conversions run
    if identity_mode not in IDENTITY_MODES:
        raise UnsupportedError(f"identity mode {identity_mode!r} is not supported; choose baked or dynamic")
    if compress not in COMPRESSIONS:
        raise UnsupportedError(f"compression {compress!r} is not supported; choose from {', '.join(COMPRESSIONS)}")
    if compress != "none" and "coreml" not in formats_l:
        raise UnsupportedError(f"--compress {compress} applies to CoreML only; add --format coreml")
    net, config, extra, ckpt_dir, ckpt_sha = export_data.load_student(source)
    size = config.size
    calib = None
    if "int8" in precisions_l and needs_onnx(formats_l):
        calib = export_data.load_calibration(calibration, size, config.template, CALIBRATION_LIMIT)
        log.info("int8 calibration: %d crops from %s", len(calib.crops), calib.source)
    encoder_name = checkpoint_encoder(extra, config.embed_dim, encoder)
    own = checkpoint_identity(extra)
    if own is not None and identity_mode == "dynamic":
        raise UnsupportedError(
            f"this checkpoint was personalised for {own.name}: export it baked; the dynamic mode is for universal "
            "students"
        )
    if config.identity_encoder and (enroll or identity_mode == "dynamic"):
        raise UnsupportedError(
            "this student has a spatial identity encoder ('identity_encoder'): it exports baked, without --enroll "
            "(its identity maps would be a second run-time input)"
        )
    baked = baked_identity(identity, own, identity_mode, config, encoder_name, extra)
    face = baked.face(size, config.template) if baked is not None and config.identity_encoder else None
    emb = baked.embedding if baked is not None else random_embedding(config.embed_dim, seed=7)

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pocketswap-export-", dir=out_dir))
    done = False
    finished: list[Artifact] = []
    try:
        job = make_job(
            net, config, identity_mode, emb, face, stage, calib, check_parity,
            name or f"{config.name}_{identity_mode}",
        )  # fmt: skip
        job.manifest_fields.update(
            source={
                "checkpoint": str(ckpt_dir),
                "checkpoint_sha256": ckpt_sha,
                "identity": baked.to_record() if baked is not None else None,
                "encoder": encoder_name,
            }
        )
        artifacts = export_formats(job, formats_l, precisions_l, image_input, compress, benchmark, finished)
        if enroll:
            artifacts += export_enrollment(job, formats_l, precisions_l, artifacts)
        moved = _move_into_place(artifacts, stage, out_dir)
        done = True
        return moved
    except KeyboardInterrupt:  # what passed parity before the interrupt is kept
        if finished:
            kept = _move_into_place(finished, stage, out_dir)
            done = True
            log.warning("interrupted: kept %d finished artifacts in %s (%s)", len(kept), out_dir,
                        ", ".join(a.path.name for a in kept))  # fmt: skip
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not done and not any(out_dir.iterdir()):
            out_dir.rmdir()


def baked_identity(
    identity: str | Path | None, own: Identity | None, mode: str, config: Any, encoder: str | None, extra: dict
) -> Identity | None:
    """The identity to bake: the checkpoint's own (a personalised run: no photo is read when it stored its
    face), else the photo / ``sample:NAME`` / ``.npy`` given (read once; a personalised checkpoint takes only
    the same person), else None (dynamic mode: supplied at run time, parity uses a random embedding)."""
    needs_face = bool(config.identity_encoder)
    if identity is None and own is not None:
        if not needs_face or own.face(config.size, config.template) is not None:
            log.info("baking the run's own identity: %s (%s)", own.name, own.source)
            return own
        if not own.source.startswith(SAMPLE_PREFIX) and not Path(own.source).is_file():
            raise ConfigError(
                f"this run was personalised for {own.name} from {own.source}, which is gone and its checkpoint keeps "
                f"no face: pass --identity with a photo of {own.name}"
            )
        identity = own.source
    if identity is None:
        if mode == "baked":
            raise ConfigError(
                "baked export needs --identity FACE.jpg|sample:NAME|EMB.npy (or use --identity-mode dynamic)"
            )
        return None
    read = read_identity(identity, config.embed_dim, encoder, config.size if needs_face else None, config.template)
    locked_identity(extra, read.embedding, str(identity), same_person_threshold(encoder))
    if own is None:
        return read
    if not needs_face or own.face(config.size, config.template) is not None:
        return own
    return dataclasses.replace(own, crop=read.crop, landmarks=read.landmarks, template=read.template)


def make_job(net, config, mode, emb, face, stage, calib, check, name) -> Job:
    """The student's export Job; ``face``: (identity crop, its landmarks) for spatial-identity students."""
    work = stage / "work"
    work.mkdir()
    size = config.size
    emb_t = torch.from_numpy(emb).reshape(1, -1)
    crop_t = None if face is None else torch.from_numpy(export_data.to_model_input(face[0]))
    module = net.bake(emb_t, crop_t) if mode == "baked" else net.dynamic()
    params = net.identity_params(emb_t).numpy() if mode == "dynamic" else None
    warped = config.identity_warp
    triangles = triangulate(face[1]) if warped else None  # the texture's fixed mesh, stored in the manifest
    rng = np.random.default_rng(0)
    cases = []
    for i in range(NUM_RANDOM_CASES):
        feeds = {IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)}
        if mode == "dynamic":
            other = torch.from_numpy(random_embedding(config.embed_dim, seed=100 + i)).reshape(1, -1)
            feeds[IDENTITY_INPUT] = net.identity_params(other).numpy()
        if warped:
            feeds[WARPED_IDENTITY_INPUT] = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        cases.append((f"random-{i}", feeds))
    for case, crop, landmarks in export_data.sample_faces(size, config.template):
        feeds = {IMAGE_INPUT: export_data.to_model_input(crop)}
        if mode == "dynamic":
            feeds[IDENTITY_INPUT] = params
        if warped:  # the identity's texture on this face, as the pipeline feeds it
            texture = (
                face[0] if landmarks is None else warp_identity(*face, landmarks, triangles, config.identity_shape)
            )
            feeds[WARPED_IDENTITY_INPUT] = export_data.to_model_input(texture)
        cases.append((case, feeds))

    @torch.no_grad()
    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(feeds[name]) for name in inputs_named]
        return {k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(*args), strict=True)}

    from pocketswap.export.patch import identity_dependent_names
    from pocketswap.faces.align import template_points

    inputs, outputs = student_tensors(net, size, mode)
    inputs_named = [t.name for t in inputs]
    with torch.no_grad():  # the exported form against the training network itself, on a real face
        feeds = cases[-1][1]
        seen = torch.from_numpy(feeds[WARPED_IDENTITY_INPUT]) if warped else crop_t
        want = net(torch.from_numpy(feeds[IMAGE_INPUT]), emb_t, seen)
        got = reference(feeds)
    fold_error = max(float(np.abs(w.numpy() - got[k]).max()) for k, w in zip(STUDENT_OUTPUTS, want, strict=True))
    if fold_error > 1e-4:
        raise ExportError(
            f"the {mode} student differs from StudentNet by {fold_error:.3g} (BatchNorm/identity folding)"
        )

    base = {
        "kind": "student",
        "identity_mode": mode,
        "preset": config.name,
        "crop_size": size,
        "template": config.template,
        "template_points": np.round(template_points(size, config.template), 3).tolist(),
        "swap_spec": swap_spec(size, config.template),
        "extra": {
            "student_config": config.to_dict(),
            "num_identity_params": int(net.num_identity_params),
            "folded_vs_studentnet_max_abs": float(f"{fold_error:.3g}"),
        },
    }
    if mode == "dynamic":
        base["extra"]["identity_layout"] = [
            {"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in net.param_layout()
        ]
    if warped:
        base["identity_texture"] = encode_texture(*face, triangles, config.identity_shape)
    origin = StudentOrigin(
        net=net,
        config=config,
        mode=mode,
        embedding=emb,
        # spatial-identity students are re-exported per identity, not patched
        identity_names=identity_dependent_names(net) if mode == "baked" and not config.identity_encoder else [],
        calibration=calib,
        identity_texture=None if not warped else export_data.to_model_input(face[0]),
    )
    checks = ParityCases(cases, reference, dict(parity.PEAKS), check)
    return Job(name, "student", module, inputs, outputs, checks, base, origin, stage, work)


# -- moving into place ---------------------------------------------------------------------------


def _move_into_place(artifacts: list[Artifact], stage: Path, out_dir: Path) -> list[Artifact]:
    """Move artifacts and manifests from the stage folder into ``out_dir`` (manifests last)."""
    moved = []
    for artifact in artifacts:
        target = out_dir / artifact.path.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        artifact.path.rename(target)
        moved.append(Artifact(target, artifact.manifest))
    for artifact, new in zip(artifacts, moved, strict=True):
        artifact.manifest_path.replace(new.manifest_path)
    for a in moved:
        log.info("wrote %s (%.1f KB)", a.path, a.manifest.file_size_bytes / 1024)
    return moved


__all__ = ["Artifact", "export_model"]
