"""Counted (not estimated) cost of a student: parameters, MACs, identity size, activation memory, latency.

Methods:
- Student params: parameters of the baked static network (BN folded, identity folded) -- what ships.
- Hypernetwork params: ``StudentNet.hypernet`` (runs once per identity, does not ship baked).
- MACs: ``torch.utils.flop_counter.FlopCounterMode`` over one batch-1 forward of the baked model,
  MACs = FLOPs / 2. It counts convolutions only (bias adds, activations, bilinear resize and concat are
  not MACs and are left out).
- Peak activation memory: a ``TorchDispatchMode`` sees every ATen op of one batch-1 fp32 forward of
  the baked model under ``torch.inference_mode``. Each output tensor's storage is counted from the op that
  creates it until the last Python reference dies (``weakref.finalize``); in-place ops and views add
  nothing. The peak of that live sum, input included and weights excluded, is reported. It is a
  measurement of PyTorch eager execution order; scratch buffers inside a kernel are not seen.
- Latency: median (and p5/p95) wall time of the baked model's forward, batch 1, on CPU with a fixed
  number of threads (default 1), after warm-up.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from pocketswap.core.metrics import percentile
from pocketswap.student.config import StudentConfig
from pocketswap.student.network import StudentNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Latency:
    """CPU forward latency of the baked model in milliseconds."""

    median_ms: float
    p5_ms: float
    p95_ms: float
    runs: int
    threads: int


@dataclass(frozen=True)
class StudentSummary:
    preset: str
    size: int
    embed_dim: int
    student_params: int  # baked static network
    hypernet_params: int
    train_params: int  # StudentNet without the hypernetwork (BN unfolded)
    macs: int  # baked model, batch 1
    identity_params: int  # P, floats per identity
    peak_activation_bytes: int  # fp32, batch 1
    latency: Latency | None = None

    @property
    def gmac(self) -> float:
        return self.macs / 1e9

    @property
    def peak_activation_mib(self) -> float:
        return self.peak_activation_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gmac"] = round(self.gmac, 4)
        out["peak_activation_mib"] = round(self.peak_activation_mib, 3)
        return out


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward, counted with FlopCounterMode (FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*inputs)
    return counter.get_total_flops() // 2


class _LiveActivations(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by ops and still referenced; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live tensor objects]
        self._tracked: set[int] = set()

    def track(self, tensor: torch.Tensor) -> None:
        if id(tensor) in self._tracked:
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        self._tracked.add(id(tensor))
        weakref.finalize(tensor, self._release, id(tensor), key)

    def _release(self, tensor_id: int, key: int) -> None:
        self._tracked.discard(tensor_id)
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


def peak_activation_bytes(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Peak bytes of live activations (inputs included, weights excluded) during one forward."""
    inputs = tuple(t.clone() for t in inputs)
    mode = _LiveActivations()
    with torch.inference_mode(), mode:
        for t in inputs:
            mode.track(t)
        outputs = model(*inputs)
        del outputs
    return mode.peak


def measure_latency(
    model: nn.Module, *inputs: torch.Tensor, runs: int = 100, warmup: int = 10, threads: int = 1
) -> Latency:
    """Wall-clock forward latency on CPU with ``threads`` intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        with torch.inference_mode():
            for i in range(warmup + runs):
                start = time.perf_counter()
                model(*inputs)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return Latency(percentile(times, 50), percentile(times, 5), percentile(times, 95), runs, threads)


def summarize(
    config: StudentConfig, latency: bool = False, runs: int = 100, threads: int = 1, seed: int = 0
) -> StudentSummary:
    """Build a randomly initialised student for ``config`` and count its cost (weights do not affect counts)."""
    torch.manual_seed(seed)
    net = StudentNet(config).eval()
    baked = net.bake(torch.randn(1, config.embed_dim))
    image = torch.zeros(1, 3, config.size, config.size)
    inputs = (image, image) if config.identity_warp else (image,)  # the warped identity is a second input
    lat = measure_latency(baked, *inputs, runs=runs, threads=threads) if latency else None
    summary = StudentSummary(
        preset=config.name,
        size=config.size,
        embed_dim=config.embed_dim,
        student_params=count_params(baked),
        hypernet_params=count_params(net.hypernet),
        train_params=count_params(net) - count_params(net.hypernet),
        macs=count_macs(baked, *inputs),
        identity_params=net.num_identity_params,
        peak_activation_bytes=peak_activation_bytes(baked, *inputs),
        latency=lat,
    )
    log.debug("summary %s: %s", config.name, summary)
    return summary


def format_table(summaries: list[StudentSummary]) -> str:
    """A plain-text table, one row per summary."""
    header = ["preset", "size", "emb", "student params", "hypernet params", "GMAC", "P", "peak act MiB"]
    with_latency = any(s.latency for s in summaries)
    if with_latency:
        header += ["median ms", "p5 ms", "p95 ms", "threads"]
    rows = []
    for s in summaries:
        row = [
            s.preset,
            str(s.size),
            str(s.embed_dim),
            f"{s.student_params:,}",
            f"{s.hypernet_params:,}",
            f"{s.gmac:.4f}",
            f"{s.identity_params:,}",
            f"{s.peak_activation_mib:.2f}",
        ]
        if with_latency:
            lat = s.latency
            row += (
                [f"{lat.median_ms:.2f}", f"{lat.p5_ms:.2f}", f"{lat.p95_ms:.2f}", str(lat.threads)] if lat else [""] * 4
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
