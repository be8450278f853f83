"""The checkpoint format shared between stages (distill writes them, export/demo/benchmarks read them);
:mod:`pocketswap.student.checkpoint` writes and rebuilds the network itself.

Layout: a directory holding two files, both written atomically (temp file + ``os.replace``)::

    DIR/model.safetensors   # state_dict of a StudentNet (hypernetwork included); no pickle
    DIR/config.json         # what is needed to rebuild and feed the model, see below

``config.json`` keys: ``format`` ("pocketswap-checkpoint"), ``format_version`` (1), ``model``
("StudentNet"), ``preset`` (config name), ``student`` (the full StudentConfig as a dict),
``embed_dim``, ``crop_size``, ``template`` (alignment template, default "arcface"),
``normalization`` (scale, offset, channels, layout), ``pocketswap_version``, ``save_id`` and ``extra`` (JSON
metadata such as the training step; a personalised checkpoint's ``identity`` is an
:class:`~pocketswap.core.identity.Identity` record). The same JSON is stored in the safetensors header
(metadata key ``pocketswap``), so a lone weights file is self-describing, and ``save_id`` ties the two
files to one save: a half-overwritten checkpoint is reported instead of silently mixed.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketswap import __version__
from pocketswap.core.errors import CheckpointError, ConfigError
from pocketswap.core.files import atomic_path, atomic_write_bytes
from pocketswap.core.identity import Identity
from pocketswap.core.jsonio import Obj, check_schema, parse_json, read_json
from pocketswap.core.metrics import cosine_distance, same_person

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "pocketswap-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "pocketswap"
# The types of the fields readers use (pocketswap.core.jsonio's schema); the student config's own fields are
# checked by StudentConfig when the network is rebuilt.
SCHEMA = Obj(
    {"format": str, "format_version": int, "model": str, "preset": (str, None), "student": dict, "embed_dim": int,
     "crop_size": int, "template": str, "normalization": (dict, str), "pocketswap_version": str, "save_id": str,
     "extra": dict},  # normalization: a text such as "[-1,1] RGB NCHW" in checkpoints of earlier versions
    required=("model", "student", "extra", "save_id"),
)  # fmt: skip


def is_checkpoint_path(path: str | Path) -> bool:
    """Whether ``path`` names a checkpoint (its folder or either file) or a run folder, not an artifact."""
    path = Path(path)
    return path.suffix in (".safetensors", ".json") or (path.is_dir() and path.suffix != ".mlpackage")


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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint (cheap: no weights are read)."""
    directory = checkpoint_dir(path)
    if not directory.exists():
        raise CheckpointError(f"no checkpoint at {directory}")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_NAME} (expected {WEIGHTS_NAME} + {CONFIG_NAME})")
    meta = read_json(config_path, "checkpoint config", error=CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a pocketswap checkpoint config (field 'format' != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint field 'format_version' is {meta.get('format_version')!r}; "
            f"this pocketswap reads version {FORMAT_VERSION}"
        )
    return check_schema(meta, SCHEMA, f"checkpoint config {config_path}", error=CheckpointError)


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a checkpoint directory: ``tensors`` (safetensors, ``meta`` in its header) and ``meta`` as
    ``config.json`` (with ``format``, ``format_version``, ``pocketswap_version`` and a fresh ``save_id`` added),
    each atomically. Returns the directory."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "pocketswap_version": __version__,
            "save_id": uuid.uuid4().hex}  # fmt: skip
    meta["extra"] = meta.pop("extra", {})
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint 'extra' metadata is not JSON-serialisable: {exc}") from exc
    directory = checkpoint_dir(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={_META_KEY: meta_text})
        except SafetensorError as exc:  # a full disk reaches us as this, not as an OSError
            raise OSError(str(exc).splitlines()[0] if str(exc) else "safetensors could not write") from exc
    atomic_write_bytes(directory / CONFIG_NAME, (meta_text + "\n").encode())
    return directory


def read_weights(path: str | Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at ``path`` whose ``config.json`` is ``meta`` (:func:`read_metadata`);
    CheckpointError when unreadable or written by another save than ``meta``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = checkpoint_dir(path)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_NAME} (expected {WEIGHTS_NAME} + {CONFIG_NAME})")
    try:
        file_meta = _safetensors_metadata(weights_path)
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from exc
    if file_meta.get("save_id") not in (None, meta["save_id"]):
        raise CheckpointError(
            f"{WEIGHTS_NAME} and {CONFIG_NAME} in {directory} come from different saves (field 'save_id')"
        )
    return tensors


def checkpoint_identity(extra: dict[str, Any], where: str = "checkpoint") -> Identity | None:
    """The identity a personalised checkpoint was trained for (``extra["identity"]``), None for a universal one."""
    record = extra.get("identity")
    if not record:
        return None
    try:
        return Identity.from_record(record, f"{where}: field 'extra.identity'")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_encoder(extra: dict[str, Any], embed_dim: int, encoder: str | None = None) -> str | None:
    """The identity encoder for photos: explicit, else the checkpoint's (extra.encoder, or its training
    dataset's manifest), else dlib for 128-d students; None when unknown (photos are then refused)."""
    if encoder:
        return encoder
    if isinstance(extra.get("encoder"), str):
        return extra["encoder"]
    dataset = extra.get("dataset")
    if isinstance(dataset, str):
        from pocketswap.core.dataset import read_dataset_manifest
        from pocketswap.core.errors import PocketswapError

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
    own = checkpoint_identity(extra)
    if own is None:
        return embedding
    distance = cosine_distance(own.embedding, np.ravel(embedding))
    if not same_person(distance, threshold):
        raise ConfigError(
            f"this checkpoint was personalised for {own.name} ({own.source}); {what} is a different "
            f"person (cosine distance {distance:.3f} >= {threshold}). Personalise a run for it: "
            f"pocketswap distill personalize RUN_DIR --identity {what} --out DIR"
        )
    return own.embedding


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(_META_KEY)
    meta = parse_json(text, f"{path}: its '{_META_KEY}' metadata", error=CheckpointError) if text else {}
    return meta if isinstance(meta, dict) else {}
