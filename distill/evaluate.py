"""Evaluate a distilled student against its teacher on held-out pairs.

``evaluate(RUN_DIR, HELDOUT)`` scores three columns on the same pairs:

- ``student``: what the live pipeline shows: the EMA student's output blended over the attribute
  crop by the student's own mask (:func:`pocketswap.student.network.composite`);
- ``teacher``: the teacher's output from the dataset (PSNR/SSIM to itself would be trivially
  perfect, so they are ``null`` there);
- ``attribute``: the unchanged input crop, the do-nothing baseline (its PSNR/SSIM say how much of
  the teacher's output is already in the input; its expression/pose error is the landmark
  detector's noise floor).

Metrics (functions in :mod:`pocketswap.distill.metrics`): ``psnr_face``/``ssim_face`` to the teacher
weighted by the teacher mask; ``id_cosine`` (dlib) to the identity crop and ``id_retrieval_top1``
among the evaluated identities; ``expression_error`` (landmarks re-detected on the output vs the
attribute's, similarity-aligned, / inter-ocular distance); ``pose_error_deg`` (L2 of the yaw,
pitch, roll differences, solvePnP) plus per-angle mean absolute errors; ``landmarks_detected``
(share of outputs where a face was re-detected; the landmark metrics average over those).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketswap.core.checkpoint import resolve_checkpoint
from pocketswap.core.dataset import DatasetReader
from pocketswap.core.errors import ConfigError
from pocketswap.core.metrics import cosine_similarity, psnr, ssim
from pocketswap.core.spec import PIXELS
from pocketswap.distill import metrics as M
from pocketswap.distill.data import (
    Split,
    dataset_fingerprint,
    identity_input,
    iter_batches,
    iter_split,
)
from pocketswap.distill.state import read_run_file
from pocketswap.faces.dlib_resnet import SAME_PERSON_THRESHOLD
from pocketswap.student.checkpoint import load_checkpoint
from pocketswap.student.network import composite

log = logging.getLogger(__name__)

COLUMNS = ("student", "teacher", "attribute")
SPLITS = ("auto", "val", "train", "all")
METRICS = (
    "psnr_face",
    "ssim_face",
    "id_cosine",
    "id_distance",
    "same_person",
    "moved_closer",
    "id_retrieval_top1",
    "mask_coverage",
    "expression_error",
    "pose_error_deg",
    "yaw_error_deg",
    "pitch_error_deg",
    "roll_error_deg",
    "landmarks_detected",
)
LANDMARK_METRICS = METRICS[METRICS.index("expression_error") :]  # need a face re-detected on the output
HIGHER_IS_BETTER = {
    "psnr_face", "ssim_face", "id_cosine", "same_person", "moved_closer", "id_retrieval_top1", "mask_coverage",
    "landmarks_detected",
}  # fmt: skip
CORE = 0.9  # teacher mask above this: the face's core, which a student's mask should cover


def _run_dir(run: Path, checkpoint: Path, extra: dict[str, Any]) -> Path | None:
    for candidate in (run, checkpoint.parent.parent, Path(extra.get("run", "")) if extra.get("run") else None):
        if candidate is not None and (candidate / "run.json").is_file():
            return candidate
    return None


def _choose_split(split: str, run_dir: Path | None, reader: DatasetReader) -> tuple[Split | None, str]:
    if split == "all":
        return None, "all"
    info = read_run_file(run_dir) if run_dir is not None else None
    if info is None:
        if split in ("val", "train"):
            raise ConfigError(f"--split {split} needs a run directory (with run.json) to know the held-out identities")
        return None, "all"
    same_data = info.get("dataset_fingerprint") == dataset_fingerprint(reader)
    if split == "auto" and not same_data:
        return None, "all"
    if split in ("val", "train") and not same_data:
        log.warning("the dataset differs from the run's training data; using the run's held-out identity names")
    held = Split.from_dict(info["split"])
    if split == "train":
        return held, "train"
    if not held.val_names:
        raise ConfigError("the run has no held-out identities (val_fraction was 0): evaluate on a separate dataset")
    return held, "val"


class _Column:
    """Per-sample values of one column."""

    def __init__(self) -> None:
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.coverage: list[float] = []  # mean mask over the teacher mask's core (students, teacher)
        self.embeddings: list[np.ndarray] = []
        self.expression: list[float] = []
        self.pose: list[np.ndarray] = []
        self.detected = 0

    def embedding_matrix(self) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, 128))

    def summary(
        self, targets: np.ndarray, labels: list[str], gallery: tuple[np.ndarray, list[str]], inputs: np.ndarray
    ) -> dict:
        emb = self.embedding_matrix()
        n = len(emb)
        pose = np.stack(self.pose) if self.pose else np.zeros((0, 3))
        transfer = M.identity_transfer(emb, inputs, targets)
        out = {
            "psnr_face": _mean(self.psnr),
            "ssim_face": _mean(self.ssim),
            "id_cosine": _mean(cosine_similarity(emb, targets).tolist()),
            **transfer,
            # retrieval among one identity (a personalisation dataset) would be trivially 1
            "id_retrieval_top1": M.retrieval_top1(emb, labels, *gallery) if n and len(gallery[1]) > 1 else None,
            "mask_coverage": _mean(self.coverage),
            "expression_error": _mean(self.expression),
            "pose_error_deg": _mean(np.linalg.norm(pose, axis=1).tolist()),
            "yaw_error_deg": _mean(np.abs(pose[:, 0]).tolist()),
            "pitch_error_deg": _mean(np.abs(pose[:, 1]).tolist()),
            "roll_error_deg": _mean(np.abs(pose[:, 2]).tolist()),
            "landmarks_detected": (self.detected / n) if n else None,
        }
        return {k: (None if v is None or not np.isfinite(v) else round(float(v), 4)) for k, v in out.items()}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def evaluate(
    run: str | Path,
    data: str | Path,
    *,
    checkpoint: str = "best",
    split: str = "auto",
    max_samples: int | None = 500,
    batch_size: int = 16,
    device: str = "auto",
    landmarks: bool = True,
    progress: bool = True,
    analyzer: Any = None,
    scorer: M.IdentityScorer | None = None,
    split_from: str | Path | None = None,
) -> dict[str, Any]:
    """Score a run's student (``checkpoint``: best, last or a directory), the teacher and the input
        on the pairs of ``data``. ``split``: ``val`` (the run's held-out identities), ``train`` (pairs it
    trained on: shows the generalisation gap), ``all``, or ``auto`` (val if ``data`` is the run's
    training dataset, else all); ``split_from``: another run folder whose held-out faces to use (a
    universal student scored on a personalisation run's held-out pairs). Returns the JSON-able report."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = Path(run)
    ckpt = resolve_checkpoint(run, checkpoint) if checkpoint in ("best", "last") else resolve_checkpoint(checkpoint)
    model, scfg, extra = load_checkpoint(ckpt)
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device("cuda" if use_cuda else "cpu")
    model.to(dev)
    reader = DatasetReader(data)
    if reader.size != scfg.size or reader.embedding_dim != scfg.embed_dim:
        raise ConfigError(
            f"the dataset has {reader.size} px crops and {reader.embedding_dim}-d embeddings; the student expects "
            f"{scfg.size} px and {scfg.embed_dim}-d"
        )
    split_run = Path(split_from) if split_from is not None else _run_dir(run, ckpt, extra)
    held, which = _choose_split(split, split_run, reader)
    scorer = scorer or M.IdentityScorer()
    if landmarks and analyzer is None:
        from pocketswap.faces.analyzer import FaceAnalyzer

        analyzer = FaceAnalyzer(detector="auto")

    columns = {c: _Column() for c in COLUMNS}
    targets, labels, keys = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_samples, unit="pair", desc="eval", dynamic_ncols=True)
    size = scfg.size
    with torch.no_grad():
        for batch in iter_batches(iter_split(data, held, which, limit=max_samples), batch_size, scfg.warp_shape):
            attribute = PIXELS.to_model_torch(batch["attribute"]).to(dev)
            image, mask = model(attribute, batch["embedding"].to(dev), identity_input(batch).to(dev))
            image = composite(image.clamp(-1, 1), mask, attribute)
            images = {
                "student": PIXELS.to_pixels_torch(image),
                "teacher": batch["output"].numpy(),
                "attribute": batch["attribute"].numpy(),
            }
            teacher, masks, refs = batch["output"].numpy(), batch["mask"].numpy(), batch["landmarks"].numpy()
            core = masks > CORE
            masks_by_column = {"student": mask[:, 0].float().cpu().numpy(), "teacher": masks}
            targets.append(scorer.embed(batch["identity_image"].numpy()))
            labels += batch["identity"]
            keys += batch["keys"]
            for name, column in columns.items():
                crops = images[name]
                column.embeddings.append(scorer.embed(crops))
                if name in masks_by_column:
                    column.coverage += [
                        float(m[c].mean()) for m, c in zip(masks_by_column[name], core, strict=True) if c.any()
                    ]
                for i, crop in enumerate(crops):
                    if name != "teacher":
                        column.psnr.append(psnr(crop, teacher[i], masks[i]))
                        column.ssim.append(ssim(crop, teacher[i], masks[i]))
                    if analyzer is None:
                        continue
                    found = M.detect_crop_landmarks(analyzer, crop)
                    if found is None:
                        continue
                    column.detected += 1
                    column.expression.append(M.expression_error(found, refs[i]))
                    pose, ref_pose = M.head_pose(found, size), M.head_pose(refs[i], size)
                    if pose is not None and ref_pose is not None:
                        column.pose.append(((pose - ref_pose + 180.0) % 360.0) - 180.0)
            if bar is not None:
                bar.update(len(batch["keys"]))
    if bar is not None:
        bar.close()
    if not labels:
        raise ConfigError(f"no {which} pairs to evaluate in {data}")
    target_emb = np.concatenate(targets)
    gallery = M.identity_gallery(target_emb, labels)
    inputs = columns["attribute"].embedding_matrix()
    report_metrics = {name: col.summary(target_emb, labels, gallery, inputs) for name, col in columns.items()}
    report_metrics["attribute"]["moved_closer"] = None  # the input is the reference of "closer"
    distances = {
        name: M.identity_distances(col.embedding_matrix(), inputs, target_emb)[0] for name, col in columns.items()
    }
    per_swap = [
        {"key": key, "identity": label, **{f"{name}_distance": round(float(d[i]), 4) for name, d in distances.items()}}
        for i, (key, label) in enumerate(zip(keys, labels, strict=True))
    ]
    if not landmarks:
        for col in report_metrics.values():
            for key in LANDMARK_METRICS:
                col[key] = None
    s, t = report_metrics["student"], report_metrics["teacher"]
    gap = {
        k: (round(t[k] - s[k], 4) if s[k] is not None and t[k] is not None else None)
        for k in ("id_cosine", "same_person", "id_retrieval_top1", "expression_error", "pose_error_deg")
    }
    return {
        "checkpoint": str(ckpt),
        "step": extra.get("step"),
        "student": scfg.name,
        "data": str(Path(data).resolve()),
        "split": which,
        "num_samples": len(labels),
        "num_identities": len(gallery[1]),
        "metrics": report_metrics,
        "gap_teacher_minus_student": gap,
        "per_swap": per_swap,
        "notes": {
            "pasted": "student columns score the output pasted over the attribute crop by its own mask, as the pipeline shows it",
            "teacher.psnr_face": "n/a: the teacher output is the reference (attribute column: copy-the-input baseline)",
            "face_region": "PSNR/SSIM weighted by the teacher mask",
            "mask_coverage": f"mean of the column's mask where the teacher's is above {CORE} (a soft student mask "
            "ghosts the attribute's face back over the swap)",
            "identity": "dlib cosine of the ArcFace-aligned crop (warped to dlib's chip) to the identity crop's",
            "id_distance": "dlib cosine distance (1 - cos) of the swapped crop to the identity crop",
            "same_person": f"share of swaps with id_distance below dlib's same-person threshold "
            f"{SAME_PERSON_THRESHOLD} (as `pocketswap faces compare`); attribute column: the input itself",
            "moved_closer": "share of swaps closer to the identity than the unchanged input was",
            "id_retrieval_top1": f"nearest of {len(gallery[1])} identities (mean embedding of their identity crops)",
            "expression_error": "mean landmark distance after similarity alignment / inter-ocular distance",
            "pose_error_deg": "L2 of yaw/pitch/roll differences (solvePnP, generic 6-point face)",
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's metrics as an aligned text table (one row per metric)."""
    cols = list(report["metrics"])
    width = max(len(m) for m in METRICS) + 2
    lines = [
        f"{report['student']} student @ step {report['step']} on {report['num_samples']} {report['split']} pairs "
        f"({report['num_identities']} identities)",
        "metric".ljust(width) + "".join(c.rjust(12) for c in cols),
    ]
    for metric in METRICS:
        cells = []
        for c in cols:
            value = report["metrics"][c].get(metric)
            cells.append(("n/a" if value is None else f"{value:.4f}").rjust(12))
        arrow = " (higher better)" if metric in HIGHER_IS_BETTER else ""
        lines.append(metric.ljust(width) + "".join(cells) + arrow)
    return "\n".join(lines)


__all__ = ["COLUMNS", "METRICS", "evaluate", "format_table"]
