"""Batching for the extraction stages: DataLoader worker counts per device, and a batch size
shared across calls that halves on CUDA out-of-memory and retries (down to 1)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
def default_num_workers(choice: int, device: torch.device, ranks: int = 1) -> int:
    """DataLoader workers for `choice`: -1 -> on CUDA this rank's share of the cores this process may use (cores /
    ranks on the machine, at least 1, at most 16), on CPU 0; else `choice`.

    On CPU the model's threads already use every core, so decode workers only compete with it for the same cores
    and add inter-process copies: decoding in-process between batches is faster (benchmarks/extract.py, 2 cores,
    4096 covers: 1507 items/s with 0 workers, 1174 with 2)."""
    if choice >= 0:
        return choice
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // max(ranks, 1), 16))


# ------------------------------------------------------------------------------------- OOM batch halving


@dataclass
class BatchSize:
    """The current batch size, shared across calls; halved on CUDA out-of-memory and kept smaller after."""

    value: int
    halvings: int = 0


def run_batches(step: Callable[[int, int], None], n: int, batch: BatchSize, what: str) -> None:
    """Call step(start, stop) over [0, n) in chunks of batch.value. On torch.cuda.OutOfMemoryError the chunk is
    retried at half the size (and later chunks keep it); at size 1 the error is re-raised with a clear message."""
    start = 0
    while start < n:
        stop = min(n, start + batch.value)
        try:
            step(start, stop)
        except torch.cuda.OutOfMemoryError as e:
            if batch.value == 1:
                raise torch.cuda.OutOfMemoryError(
                    f"{what}: CUDA out of memory even at batch size 1 (after {batch.halvings} halvings): "
                    f"use a smaller model or max_length/image size, or another device") from e
            batch.value //= 2
            batch.halvings += 1
            log.warning("%s: CUDA out of memory; batch size halved to %d", what, batch.value)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
