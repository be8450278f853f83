"""`pocketswap bench quality`: the evaluation metrics on any folder of face photos a user brings.

The folder goes through the same teacher as training (geometric by default, no augmentation) to
make held-out pairs, then `pocketswap.distill.evaluate` scores the student, the teacher and the
unchanged input side by side (identity cosine and retrieval, expression and pose error,
PSNR/SSIM to the teacher). For an exported artifact the student scored is the checkpoint it was
exported from (named in its manifest); the artifact's own numerical distance from that checkpoint
is its parity record, copied into the result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError
from pocketswap.faces.samples import SAMPLE_PREFIX

log = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = (".tflite", ".onnx", ".mlpackage")


def resolve_student(target: Path) -> tuple[Path, dict[str, Any] | None]:
    """(run dir or checkpoint to evaluate, the artifact's parity record or None)."""
    if target.suffix not in ARTIFACT_SUFFIXES:
        return target, None
    from pocketswap.core.manifest import read_manifest

    manifest = read_manifest(target)  # ManifestError (a PocketswapError) names a missing or broken one
    checkpoint = (manifest.source or {}).get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        raise PocketswapError(f"{target}: its source checkpoint {checkpoint!r} is not available here")
    return Path(checkpoint), {"artifact": target.name, "precision": manifest.precision, "parity": manifest.parity}


def bench_quality(
    target: str | Path, faces: str | Path, out: str | Path, pairs: int = 64, seed: int = 0, teacher: str = "geometric"
) -> dict[str, Any]:
    """Make `pairs` held-out pairs from the photos in `faces` and score student vs teacher on them."""
    from pocketswap.core.checkpoint import resolve_checkpoint
    from pocketswap.core.files import atomic_write_json
    from pocketswap.distill.evaluate import evaluate
    from pocketswap.student.checkpoint import load_checkpoint
    from pocketswap.teacher.augment import AugmentConfig
    from pocketswap.teacher.generate import GenerateConfig, generate

    target, out = Path(target), Path(out)
    student, parity = resolve_student(target)
    checkpoint = resolve_checkpoint(student)
    _, config, extra = load_checkpoint(checkpoint)
    # A personalised student swaps in its own person only: every pair gets that identity.
    identity = (extra.get("identity") or {}).get("source", "")
    if identity and not identity.startswith(SAMPLE_PREFIX) and not Path(identity).is_file():
        raise PocketswapError(f"{target}: personalised for {identity}, which is not available here to make pairs")
    data = out / "pairs"
    cfg = GenerateConfig(
        out=str(data), faces=str(faces), pairs=pairs, teacher=teacher, size=config.size, seed=seed,
        augment=AugmentConfig(enabled=False), same_identity_share=0.0, identity=identity,
    )  # fmt: skip
    generate(cfg, rank=0, world_size=1)
    report = evaluate(checkpoint, data, checkpoint=str(checkpoint), split="all", max_samples=pairs)
    report.update({"kind": "quality", "faces": str(faces), "target": str(target), "artifact": parity})
    atomic_write_json(out / "quality.json", report)
    return report
