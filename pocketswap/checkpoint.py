"""Student checkpoints shared between stages (distill writes them, export/demo/benchmarks read them).

Layout: a directory holding two files, both written atomically (temp file + ``os.replace``)::

    DIR/model.safetensors   # state_dict of a StudentNet (hypernetwork included); no pickle
    DIR/config.json         # what is needed to rebuild and feed the model, see below

``config.json`` keys: ``format`` ("pocketswap-checkpoint"), ``format_version`` (1), ``model``
("StudentNet"), ``preset`` (config name), ``student`` (the full StudentConfig as a dict),
``embed_dim``, ``crop_size``, ``template`` (alignment template, default "arcface"),
``normalization`` ("[-1,1] RGB NCHW"), ``pocketswap_version``, ``save_id`` and ``extra`` (free-form
JSON metadata such as the training step). The same JSON is stored in the safetensors header
(metadata key ``pocketswap``), so a lone weights file is self-describing, and ``save_id`` ties the two
files to one save: a half-overwritten checkpoint is reported instead of silently mixed.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketswap import __version__
from pocketswap.errors import CheckpointError, ConfigError
from pocketswap.files import atomic_path, atomic_write_bytes
from pocketswap.student.config import StudentConfig
from pocketswap.student.network import StudentNet

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "pocketswap-checkpoint"
FORMAT_VERSION = 1
NORMALIZATION = "[-1,1] RGB NCHW"
_META_KEY = "pocketswap"


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory for ``path``: the directory itself or the parent of one of its two files."""
    path = Path(path)
    if path.name in (WEIGHTS_NAME, CONFIG_NAME) and not path.is_dir():
        return path.parent
    return path


def resolve_checkpoint(source: str | Path, which: str = "best") -> Path:
    """A checkpoint directory from a checkpoint folder or file, or from a distill RUN_DIR.

    In a run directory ``which="best"`` prefers ``best/``, then ``last``, then the newest checkpoint;
    ``which="last"`` skips ``best/``."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    directory = checkpoint_dir(path)
    if (directory / CONFIG_NAME).is_file() or (directory / WEIGHTS_NAME).is_file():
        return directory
    if path.is_dir():
        for preferred in ("best", "last") if which == "best" else ("last",):
            candidate = (path / preferred).resolve()
            if (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
                return candidate
            if candidate.is_dir():  # damaged: say so rather than quietly use another checkpoint
                missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (candidate / n).is_file()]
                raise CheckpointError(
                    f"{path / preferred}: damaged checkpoint (no {' or '.join(missing)}); resume the run "
                    f"(`pocketswap distill train --out {path} --resume`) to restore it, or point at another checkpoint"
                )
        found = [p.parent for p in path.rglob(CONFIG_NAME) if (p.parent / WEIGHTS_NAME).is_file()]
        if found:
            return max(found, key=lambda p: (p / WEIGHTS_NAME).stat().st_mtime)
        if any(path.rglob(WEIGHTS_NAME)):
            raise CheckpointError(
                f"{path}: found {WEIGHTS_NAME} but no {CONFIG_NAME} next to it (checkpoint without a config)"
            )
    raise CheckpointError(f"{path}: no checkpoint ({WEIGHTS_NAME} + {CONFIG_NAME}) found")


def save_checkpoint(
    path: str | Path, model: nn.Module, config: StudentConfig | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (a StudentNet) to directory ``path``; returns the directory.

    ``config`` defaults to ``model.config`` and must equal it when both exist. ``extra`` must be JSON-serialisable.
    """
    from safetensors.torch import save_file

    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, StudentConfig):
        raise CheckpointError("save_checkpoint needs a StudentConfig (pass config= or a model with .config)")
    model_config = getattr(model, "config", None)
    if model_config is not None and model_config != config:
        field = _first_difference(model_config.to_dict(), config.to_dict())
        raise CheckpointError(f"config field '{field}' differs between the model and the config passed to save")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "preset": config.name,
        "student": config.to_dict(),
        "embed_dim": config.embed_dim,
        "crop_size": config.size,
        "template": config.template,
        "normalization": NORMALIZATION,
        "pocketswap_version": __version__,
        "save_id": uuid.uuid4().hex,
        "extra": dict(extra or {}),
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint 'extra' metadata is not JSON-serialisable: {exc}") from exc

    directory = checkpoint_dir(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: meta_text})
    atomic_write_bytes(directory / CONFIG_NAME, (meta_text + "\n").encode())
    log.info("saved %s checkpoint (%s) to %s", config.name, type(model).__name__, directory)
    return directory


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint (cheap: no weights are read)."""
    directory = checkpoint_dir(path)
    if not directory.exists():
        raise CheckpointError(f"no checkpoint at {directory}")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_NAME} (expected {WEIGHTS_NAME} + {CONFIG_NAME})")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint config {config_path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a pocketswap checkpoint config (field 'format' != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint field 'format_version' is {meta.get('format_version')!r}; "
            f"this pocketswap reads version {FORMAT_VERSION}"
        )
    for key in ("model", "student", "extra", "save_id"):
        if key not in meta:
            raise CheckpointError(f"checkpoint config {config_path} lacks field '{key}'")
    return meta


def load_checkpoint(
    path: str | Path, expected_config: StudentConfig | dict[str, Any] | str | None = None
) -> tuple[StudentNet, StudentConfig, dict[str, Any]]:
    """Load a checkpoint directory (or either of its files) -> (model in eval mode, config, extra).

    ``expected_config``: a StudentConfig (all fields must match), a dict (the given fields must match) or a
    preset name (field 'name' must match). A mismatch raises CheckpointError naming the field.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = checkpoint_dir(path)
    meta = read_metadata(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_NAME} (expected {WEIGHTS_NAME} + {CONFIG_NAME})")
    if meta["model"] != "StudentNet":
        raise CheckpointError(f"checkpoint field 'model' is {meta['model']!r}; only 'StudentNet' can be loaded")
    try:
        config = StudentConfig.from_dict(meta["student"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {directory}: invalid student config: {exc}") from exc
    for key, value in (("embed_dim", config.embed_dim), ("crop_size", config.size), ("template", config.template)):
        if key in meta and meta[key] != value:
            raise CheckpointError(
                f"checkpoint field '{key}' ({meta[key]!r}) disagrees with its student config ({value!r})"
            )
    if meta.get("pocketswap_version") != __version__:
        log.info("checkpoint written by pocketswap %s (this is %s)", meta.get("pocketswap_version"), __version__)
    _check_expected(config, expected_config)

    try:
        file_meta = _safetensors_metadata(weights_path)
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from exc
    if file_meta.get("save_id") not in (None, meta["save_id"]):
        raise CheckpointError(
            f"{WEIGHTS_NAME} and {CONFIG_NAME} in {directory} come from different saves (field 'save_id')"
        )

    model = StudentNet(config)
    _check_state(model.state_dict(), tensors)
    model.load_state_dict(tensors)
    model.eval()
    return model, config, dict(meta["extra"])


def identity_record(identity: dict[str, Any]) -> dict[str, Any]:
    """What a one-identity (personalised) checkpoint stores in ``extra["identity"]``, from a
    personalisation dataset manifest's ``identity`` entry: name, source, embedding and its hash."""
    import numpy as np

    from pocketswap.faces.identity import embedding_sha256

    embedding = np.asarray(identity["embedding"], np.float32)
    return {
        "name": identity["name"],
        "source": identity["source"],
        "embedding_sha256": embedding_sha256(embedding),
        "embedding": [float(v) for v in embedding],
    }


def checkpoint_encoder(extra: dict[str, Any], embed_dim: int, encoder: str | None = None) -> str | None:
    """The identity encoder for photos: explicit, else the checkpoint's (extra.encoder, or its training
    dataset's manifest), else dlib for 128-d students; None when unknown (photos are then refused)."""
    if encoder:
        return encoder
    if isinstance(extra.get("encoder"), str):
        return extra["encoder"]
    dataset = extra.get("dataset")
    if isinstance(dataset, str):
        from pocketswap.dataset import read_dataset_manifest
        from pocketswap.errors import PocketswapError

        try:
            named = read_dataset_manifest(dataset).embedding.get("encoder")
            if isinstance(named, str):
                return named
        except PocketswapError:
            log.debug("training dataset %s not readable; guessing the encoder", dataset)
    return "dlib" if embed_dim == 128 else None


def locked_identity(extra: dict[str, Any], embedding: Any, what: str, threshold: float) -> Any:
    """The embedding to bake: ``embedding`` for a universal checkpoint; for a personalised one, the
    checkpoint's own identity when ``embedding`` is the same person (cosine distance < ``threshold``),
    else ConfigError (a one-identity student cannot swap in anybody else)."""
    import numpy as np

    record = extra.get("identity")
    if not record:
        return embedding
    from pocketswap.faces.identity import cosine_distance, same_person

    own = np.asarray(record["embedding"], np.float32)
    distance = cosine_distance(own, embedding)
    if not same_person(distance, threshold):
        raise ConfigError(
            f"this checkpoint was personalised for {record['name']} ({record['source']}); {what} is a different "
            f"person (cosine distance {distance:.3f} >= {threshold}). Personalise a run for it: "
            f"pocketswap distill personalize RUN_DIR --identity {what} --out DIR"
        )
    return own


def _check_expected(config: StudentConfig, expected: StudentConfig | dict[str, Any] | str | None) -> None:
    if expected is None:
        return
    if isinstance(expected, str):
        expected = {"name": expected}
    elif isinstance(expected, StudentConfig):
        expected = expected.to_dict()
    actual = config.to_dict()
    unknown = sorted(set(expected) - set(actual))
    if unknown:
        raise CheckpointError(f"expected_config has unknown field '{unknown[0]}'")
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    order = ["name", *(k for k in actual if k != "name")]
    wrong = [k for k in order if k in expected and expected[k] != actual[k]]
    if wrong:
        details = "; ".join(f"field '{k}' is {actual[k]!r} but expected {expected[k]!r}" for k in wrong)
        raise CheckpointError(f"checkpoint does not match the expected config: {details}")


def _check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"checkpoint lacks tensor '{missing[0]}' ({len(missing)} missing)")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise CheckpointError(f"checkpoint has unexpected tensor '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for k, v in expected.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint tensor '{k}' has shape {list(found[k].shape)} but the config needs {list(v.shape)}"
            )


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(_META_KEY)
    return json.loads(text) if text else {}


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    return next((k for k in a if a.get(k) != b.get(k)), "?")
