"""What the app's Model and Compare tabs show: the served model's manifest, the artifacts exported beside
it (the Live tab's picker), and the personalisation run behind it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import read_eval_report
from pocketswap.faces.samples import SAMPLE_PREFIX


@dataclass
class ArtifactChoice:
    """One exported artifact the Live tab can switch to, with what its manifest says of it."""

    path: str
    name: str
    runtime: str
    precision: str
    size_bytes: int
    sha256: str
    parity: str  # e.g. "passed, max abs 8.3e-07"
    delegation: str  # e.g. "fully delegated (XNNPACK (LiteRT CPU))"
    unavailable: str = ""  # why it cannot run on this machine ('' = it can)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def artifact_choices(model: Path, manifest) -> list[ArtifactChoice]:
    """The artifacts exported with ``model`` (same folder, same identity): the served one first. A
    checkpoint (no manifest) has none; unreadable manifests are skipped."""
    from pocketswap.core.manifest import ManifestError, read_manifest

    if manifest is None:
        return []
    found = [(model, manifest)]
    for path in sorted(model.parent.glob("*.json")):
        artifact = path.with_name(path.stem)
        if artifact == model or not artifact.exists():
            continue
        try:
            other = read_manifest(path)
        except ManifestError:
            continue
        if _identity_hash(other) == _identity_hash(manifest):
            found.append((artifact, other))
    return [_choice(path, m) for path, m in found]


def _identity_hash(manifest) -> str | None:
    from pocketswap.core.manifest import ManifestError

    try:
        baked = manifest.identity()
    except ManifestError:
        return None
    return baked.sha256 if baked is not None else None


def _choice(path: Path, manifest) -> ArtifactChoice:
    from pocketswap.demo.swap_model import unavailable_here

    parity = manifest.parity or {}
    verdict = "passed" if parity.get("passed") else "FAILED" if parity else "not checked"
    if "max_abs" in parity:
        verdict += f", max abs {parity['max_abs']:.2g}"
    if parity.get("min_psnr_db") is not None and manifest.precision == "int8":
        verdict += f", {parity['min_psnr_db']:.1f} dB"
    delegation = manifest.delegation or {}
    if delegation:
        how = "fully delegated" if delegation.get("fully_accelerated") else "partly delegated"
        delegation_text = f"{how} ({delegation.get('delegate', '?')})"
    else:
        delegation_text = "–"
    return ArtifactChoice(str(path), path.name, manifest.runtime, manifest.precision, manifest.file_size_bytes,
                          manifest.sha256, verdict, delegation_text, unavailable_here(path))  # fmt: skip


def model_manifest(model: Path):
    """The artifact's manifest, or None for a checkpoint / run folder."""
    from pocketswap.core.manifest import ManifestError, read_manifest

    try:
        return read_manifest(model)
    except ManifestError:
        return None


def describe_model(model: Path, identities: list[Path], manifest) -> dict[str, Any]:
    """What the Model tab shows: the artifact's manifest (or the checkpoint's config) and the identities."""
    info: dict[str, Any] = {"model": str(model), "identities": [_identity_name(p) for p in identities]}
    info["manifest"] = manifest.to_dict() if manifest is not None else None
    if manifest is not None and manifest.identity_mode == "baked":  # whose face the artifact carries
        from pocketswap.core.manifest import ManifestError

        try:
            baked = manifest.identity()
        except ManifestError:
            baked = None
        info["baked_identity"] = baked.name if baked is not None else "an unnamed photo"
    config = model / "config.json"
    if manifest is None and config.is_file():
        from pocketswap.core.checkpoint import read_metadata

        info["checkpoint_config"] = read_metadata(model)
    return info


COMPARE_COLUMNS = ("teacher", "universal", "personalised", "attribute")
COMPARE_FIELDS = ("same_person", "moved_closer", "id_distance", "psnr_face")


def comparison_run(model: Path, manifest=None) -> Path | None:
    """The personalisation run behind the model (its ``eval.json`` + ``compare.png``): the model's own
    folder, or the checkpoint its manifest names."""
    candidates = [model, model.parent]
    checkpoint = (manifest.source or {}).get("checkpoint") if manifest is not None else None
    if checkpoint:
        candidates += [Path(checkpoint), Path(checkpoint).parent]
    for folder in candidates:
        if (folder / "eval.json").is_file() and (folder / "compare.png").is_file():
            return folder
    return None


def comparison(run: Path | None) -> dict[str, Any]:
    """Teacher | universal | personalised | input on the personalisation's held-out faces (the Compare tab)."""
    if run is None:
        return {"available": False, "hint": "personalise first: pocketswap distill personalize RUN_DIR --identity "
                "PHOTO --out DIR, then export DIR (the Compare tab reads DIR/eval.json)"}  # fmt: skip
    try:
        report = read_eval_report(run / "eval.json")
        metrics = report.get("metrics", {})
        rows = {c: {f: metrics[c].get(f) for f in COMPARE_FIELDS} for c in COMPARE_COLUMNS if c in metrics}
    except PocketswapError as exc:  # cut, garbled, deep or foreign
        return {"available": False, "hint": f"{run / 'eval.json'} is unreadable ({type(exc).__name__}); run "
                f"pocketswap distill eval again to rewrite it"}  # fmt: skip
    return {"available": True, "run": str(run), "num_samples": report.get("num_samples"), "rows": rows}


def _identity_name(path: Path) -> str:
    return str(path) if str(path).startswith(SAMPLE_PREFIX) else path.name
