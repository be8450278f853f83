"""Process and optimiser set-up of the trainer: devices and DDP ranks, CPU threads, signals, the
LR schedule, parameter groups and starting weights."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pocketswap.core.config import distributed_rank
from pocketswap.core.errors import ConfigError
from pocketswap.distill.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(config: TrainConfig) -> Dist:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ConfigError("config field 'device' is cuda but CUDA is not available")
    use_cuda = cuda and config.device in ("auto", "cuda")
    _, world = distributed_rank()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Dist(rank, world, device, owns)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(module: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """No weight decay on biases, norm affines (1-D) and identity maps; the hypernetwork's and the
    identity maps' LR scaled (``hyper_lr_mult``, ``map_lr_mult``); ``freeze``d parts left out (and
    their ``requires_grad`` cleared)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        path = f".{name}."
        if any(f".student.{part}." in path for part in cfg.freeze):
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        part = "hyper" if ".hypernet." in path else "map" if ".skip_maps." in path or ".head_map." in path else ""
        groups.setdefault((part, p.ndim > 1 and part != "map"), []).append(p)
    mult = {"hyper": cfg.hyper_lr_mult, "map": cfg.map_lr_mult, "": 1.0}
    return [
        {"params": params, "lr": cfg.lr * mult[part], "weight_decay": cfg.weight_decay if decay else 0.0}
        for (part, decay), params in sorted(groups.items())
    ]


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over :func:`param_groups` and its warmup + cosine :func:`lr_factor` schedule."""
    optimizer = torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, betas=cfg.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    return optimizer, schedule


def seed_everything(seed: int) -> None:
    """Seed torch and the global numpy/random RNGs (third-party code may use them)."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def auto_threads(num_workers: int) -> int:
    """CPU cores per training process, minus the DataLoader workers' (oversubscribed OpenMP threads
    spin and can make a step several times slower on a busy machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - num_workers)


def use_deterministic_algorithms(ctx: Dist) -> None:
    """Deterministic kernels (cuBLAS workspace and no cuDNN autotuning on CUDA: warn, not fail, there)."""
    if ctx.device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=ctx.device.type == "cuda")


_STOP_REQUESTED: list[int] = []  # signals received while a deferred-interrupt block runs


def defer_interrupts() -> Any:
    """Make Ctrl-C and SIGTERM (e.g. a preempted job) *request* a stop instead of raising at once: the
    training loop stops at the next step boundary (:func:`stop_requested`), so its checkpoint never holds a
    half-taken step and ``--resume`` continues exactly. A second Ctrl-C interrupts at once. Returns a
    function restoring the previous handlers, or None when not in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _STOP_REQUESTED.clear()

    def handler(signum: int, frame: Any) -> None:
        if _STOP_REQUESTED and signum == signal.SIGINT:
            raise KeyboardInterrupt(f"signal {signum}")
        _STOP_REQUESTED.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _STOP_REQUESTED.clear()

    return restore


def stop_requested() -> bool:
    """True once a signal asked a :func:`defer_interrupts` block to stop."""
    return bool(_STOP_REQUESTED)


def load_initial_weights(student: nn.Module, source: str) -> None:
    """Start from a checkpoint's weights; tensors the checkpoint lacks (new identity maps) keep their init."""
    from pocketswap.core.checkpoint import resolve_checkpoint
    from pocketswap.student.checkpoint import load_checkpoint

    init, _, _ = load_checkpoint(resolve_checkpoint(source))
    own, found = student.state_dict(), init.state_dict()
    for name, tensor in found.items():
        if name not in own or own[name].shape != tensor.shape:
            raise ConfigError(
                f"config field 'init_from': {source} does not fit this student (tensor '{name}' "
                f"{list(tensor.shape)} vs {list(own[name].shape) if name in own else 'absent'})"
            )
    missing = student.load_state_dict(found, strict=False).missing_keys
    log.info("initialised from %s%s", source, f" ({len(missing)} new tensors)" if missing else "")
