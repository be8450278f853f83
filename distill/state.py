"""Run-directory bookkeeping: training-state files, atomic checkpoint directories, pointers.

A training state is a nested structure (dicts, lists, tuples, numbers, strings, tensors) such as an
optimiser's ``state_dict()``. It is stored as ``train_state.safetensors`` (every tensor, under a
path-like key) plus ``train_state.json`` (the structure, with tensors replaced by their keys), so
nothing is unpickled on load.

RUN_DIR layout::

    config.yaml                       resolved TrainConfig
    run.json                          dataset, student config, held-out identities, world size
    metrics.jsonl                     one JSON object per log/validation event
    tb/                               TensorBoard events
    samples/step-000500.png           image grids: identity | attribute | teacher | student | mask
    checkpoints/step-000500/          EMA student (model.safetensors + config.json, the shared
                                      checkpoint format) + train_state.safetensors/.json
    last -> checkpoints/step-000500   symlink to the newest checkpoint
    best/                             copy of the EMA student with the lowest validation loss
    summary.json                      RunSummary of the finished run
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketswap.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from pocketswap.core.errors import CheckpointError
from pocketswap.core.files import atomic_path, atomic_write_bytes, replace_dir
from pocketswap.core.jsonio import Obj, read_json

log = logging.getLogger(__name__)

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# -- nested state <-> (tensors, JSON) ------------------------------------------------------------
def flatten(tree: Any, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able structure, {key: tensor}) of a nested state."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"{len(tensors)}:{path}"  # the index keeps keys unique whatever the dict keys contain
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {k: walk(v, f"{path}.{k}") for k, v in value.items()}}
            if all(isinstance(k, int) for k in value):
                return {"__intdict__": {str(k): walk(v, f"{path}.{k}") for k, v in value.items()}}
            raise TypeError(f"{path}: dict keys must be all str or all int")
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{path}: cannot store {type(value).__name__} in a training state")

    return walk(tree, prefix), tensors


def unflatten(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(structure, list):
        return [unflatten(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            return tensors[structure["__tensor__"]]
        if "__dict__" in structure:
            return {k: unflatten(v, tensors) for k, v in structure["__dict__"].items()}
        if "__intdict__" in structure:
            return {int(k): unflatten(v, tensors) for k, v in structure["__intdict__"].items()}
        if "__tuple__" in structure:
            return tuple(unflatten(v, tensors) for v in structure["__tuple__"])
    return structure


def save_state(directory: Path, tree: Any) -> None:
    """Write ``train_state.safetensors`` + ``train_state.json`` into ``directory`` (each atomically)."""
    from safetensors.torch import save_file

    structure, tensors = flatten(tree)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_bytes(directory / STATE_JSON, (json.dumps(structure) + "\n").encode())


RUN_JSON = "run.json"
# The types of the run.json fields readers use (pocketswap.core.jsonio's schema).
RUN_SCHEMA = Obj(
    {"data": str, "dataset_fingerprint": str, "dataset_samples": int, "student": dict, "world_size": int,
     "num_workers": int, "split": Obj({"val_names": [str], "fraction": float, "salt": int, "strict": bool, "by": str},
                                      required=("val_names", "fraction", "salt", "strict"))},
    required=("data", "split"),
)  # fmt: skip


def read_run_file(run: Path) -> dict[str, Any]:
    """A run's ``run.json`` (dataset, split, student); CheckpointError naming the field when it is unreadable."""
    return read_json(Path(run) / RUN_JSON, "run file", error=CheckpointError, schema=RUN_SCHEMA)


def load_state(directory: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        structure = read_json(directory / STATE_JSON, "training state", error=CheckpointError)
        tensors = load_file(str(directory / STATE_TENSORS))
        return unflatten(structure, tensors)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"training state in {directory} is unreadable: {exc}") from exc


# -- run directory -------------------------------------------------------------------------------
def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (weights, config and training state present), oldest first."""
    found = []
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and all((path / n).is_file() for n in (WEIGHTS_NAME, CONFIG_NAME, STATE_JSON, STATE_TENSORS)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def point_last(run: Path, target: Path) -> None:
    """Atomically point ``RUN_DIR/last`` at ``target`` (a relative symlink)."""
    link = run / "last"
    tmp = run / f".last.{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(os.path.relpath(target, run), tmp)
        if link.exists() and not link.is_symlink():
            shutil.rmtree(link)
        os.replace(tmp, link)
    except OSError as exc:  # e.g. no symlinks on this filesystem
        log.warning("could not update %s: %s", link, exc)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def copy_model(source: Path, dest: Path, info: dict[str, Any]) -> None:
    """Copy a checkpoint's model files (not its training state) to ``dest`` atomically, with ``info.json``."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copy2(source / name, tmp / name)
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, dest)
    except BaseException:  # Ctrl-C or a full disk mid-copy: no temp folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def restore_best(run: Path, best_step: int | None, best_val: float) -> bool:
    """Bring back ``best/`` of a run stopped while copying it, from its step checkpoint. False when
    the run has a best step but neither ``best/`` nor that checkpoint exists any more."""
    if best_step is None or (run / "best").is_dir():
        return True
    source = run / "checkpoints" / step_name(best_step)
    if not source.is_dir():
        log.warning("best/ (step %d) is missing and its checkpoint was pruned", best_step)
        return False
    copy_model(source, run / "best", {"step": best_step, "val": {"loss": best_val}})
    log.info("restored best/ from %s", source)
    return True


def prune(run: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (and stale temporary directories)."""
    for _, path in list_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for path in [*(run / "checkpoints").glob(".step-*.tmp*"), *run.glob(".best.*.tmp")]:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunSummary:
    """What a finished (or stopped) run did. ``weights_sha256`` hashes the EMA student; in DDP
    ``rank_weights_sha256`` lists every rank's hash (all equal when the ranks agree)."""

    out: str
    step: int
    steps: int
    stopped: str  # "completed", "stop_after" or "interrupted"
    final_loss: float | None
    best_step: int | None
    best_val_loss: float | None
    last_checkpoint: str | None
    best_checkpoint: str | None
    samples_per_s: float
    train_seconds: float
    wall_seconds: float
    world_size: int
    weights_sha256: str
    rank_weights_sha256: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = [
    "RunSummary",
    "rng_state",
    "set_rng_state",
    "weights_digest",
    "copy_model",
    "flatten",
    "latest_checkpoint",
    "list_checkpoints",
    "load_state",
    "point_last",
    "prune",
    "save_state",
    "step_name",
    "unflatten",
]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG third-party code may use
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },  # fmt: skip
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    n = saved["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    version, internal, gauss = json.loads(saved["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
