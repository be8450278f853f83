"""Process set-up shared by the analysis and pair workers of generation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_thread_torch() -> Iterator[None]:
    """Run torch on one thread inside the block: a convolution's float sums depend on the thread
    count, and embeddings must not depend on how many workers generated a dataset."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def limit_threads() -> None:
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def pool_context():
    """Spawned workers: forking a process whose OpenCV/OpenMP thread pools are running can deadlock
    (e.g. ``cv2.setNumThreads`` in the child), so workers start clean and load their own models."""
    import multiprocessing

    return multiprocessing.get_context("spawn")
