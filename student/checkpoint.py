"""A StudentNet to and from the checkpoint format of :mod:`pocketswap.core.checkpoint`.

The format (files, metadata, save ids, identity) lives on the ground floor; this module is the part that
knows the network: it writes a StudentNet's state and config, and rebuilds it, checking every tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketswap import __version__
from pocketswap.core.checkpoint import checkpoint_dir, read_metadata, read_weights, write_checkpoint
from pocketswap.core.errors import CheckpointError, ConfigError
from pocketswap.core.spec import PIXELS
from pocketswap.student.config import StudentConfig
from pocketswap.student.network import StudentNet

log = logging.getLogger(__name__)


def save_checkpoint(
    path: str | Path, model: nn.Module, config: StudentConfig | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (a StudentNet) to directory ``path``; returns the directory.

    ``config`` defaults to ``model.config`` and must equal it when both exist. ``extra`` must be JSON-serialisable.
    """
    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, StudentConfig):
        raise CheckpointError("save_checkpoint needs a StudentConfig (pass config= or a model with .config)")
    model_config = getattr(model, "config", None)
    if model_config is not None and model_config != config:
        a, b = model_config.to_dict(), config.to_dict()
        field = next((k for k in a if a.get(k) != b.get(k)), "?")
        raise CheckpointError(f"config field '{field}' differs between the model and the config passed to save")
    meta = {
        "model": type(model).__name__,
        "preset": config.name,
        "student": config.to_dict(),
        "embed_dim": config.embed_dim,
        "crop_size": config.size,
        "template": config.template,
        "normalization": {**PIXELS.to_dict(), "layout": "NCHW"},
        "extra": dict(extra or {}),
    }
    directory = write_checkpoint(path, model.state_dict(), meta)
    log.info("saved %s checkpoint (%s) to %s", config.name, type(model).__name__, directory)
    return directory


def load_checkpoint(
    path: str | Path, expected_config: StudentConfig | dict[str, Any] | str | None = None
) -> tuple[StudentNet, StudentConfig, dict[str, Any]]:
    """Load a checkpoint directory (or either of its files) -> (model in eval mode, config, extra).

    ``expected_config``: a StudentConfig (all fields must match), a dict (the given fields must match) or a
    preset name (field 'name' must match). A mismatch raises CheckpointError naming the field.
    """
    directory = checkpoint_dir(path)
    meta = read_metadata(directory)
    tensors = read_weights(directory, meta)
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
    model = StudentNet(config)
    _check_state(model.state_dict(), tensors)
    model.load_state_dict(tensors)
    model.eval()
    return model, config, dict(meta["extra"])


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


__all__ = ["load_checkpoint", "save_checkpoint"]
