"""Multi-process runs under `torchrun`: which rank this process is, its device, and the few collectives we need.

    torchrun --standalone --nproc_per_node 4 -m stages.extract_image --out ... --metrics ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a stage runs as the single rank 0 of a world of 1 and
no process group is created. With CUDA each rank takes GPU LOCAL_RANK and the group uses NCCL; on CPU it uses gloo
(which is how the tests run 2 ranks on one machine).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipeline.core.config import ParamsError
from pipeline.core.io import DataError
from pipeline.core.stage import pick_device

log = logging.getLogger(__name__)

# How long a rank may wait in a collective for the others. Ranks of an extraction finish their shards at different
# times and then meet at one barrier, so this bounds the imbalance of a run, not a single step.
GROUP_TIMEOUT = timedelta(hours=12)
# What gloo's error says when the rank at the other end of a collective has exited.
PEER_GONE = re.compile(r"Connection (?:closed|reset) by peer")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank in [0, world), local_rank = its index on this machine, local_world =
    the ranks on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, k: int) -> bool:
        """Whether work unit k (a shard) is this rank's: units are dealt round-robin, k % world == rank."""
        return k % self.world == self.rank

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of `value` over all ranks (the value itself in a world of 1)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch CPU RNG state, in rank order, on every rank: dropout draws differ per rank, so a
        resumed run must give each rank its own back ([this process's] in a world of 1)."""
        state = torch.get_rng_state()
        if not self.enabled:
            return [state]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def gather_slices(self, part: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
        """The (n,) CPU vector whose slice r of torch.arange(n).tensor_split(world) is rank r's `part`, on every
        rank (`part` itself in a world of 1). Slices are padded to one length for the collective."""
        if not self.enabled:
            return part
        sizes = [len(s) for s in torch.arange(n).tensor_split(self.world)]
        if len(part) != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {len(part)} rows, its slice has {sizes[self.rank]}")
        padded = torch.zeros(max(sizes), dtype=part.dtype, device=device)
        padded[:len(part)] = part.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:k].cpu() for p, k in zip(parts, sizes)])


SINGLE = Dist()  # the default: one process, no process group


def dist_from_env(env: dict[str, str] | None = None) -> Dist:
    """The Dist described by torchrun's environment variables; Dist() when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Dist()
    try:
        d = Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])),
                 int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    except (KeyError, ValueError) as e:
        raise ParamsError(f"torchrun environment: RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None
    if d.world < 1 or not 0 <= d.rank < d.world:
        raise ParamsError(f"torchrun environment: RANK={d.rank} is outside WORLD_SIZE={d.world}")
    return d


@contextmanager
def distributed(device_choice: str, key: str) -> Iterator[tuple[Dist, torch.device]]:
    """(Dist, this rank's device) for a stage body; sets up and tears down the process group under torchrun.

    `device_choice` is the stage's device param (auto | cpu | cuda), named `key` in errors. Under torchrun with
    CUDA, rank r of a machine uses cuda:LOCAL_RANK (more ranks than GPUs is a ParamsError).
    """
    d = dist_from_env()
    device = pick_device(device_choice, key)
    if device.type == "cuda" and d.enabled:
        if d.local_rank >= torch.cuda.device_count():
            raise ParamsError(f"{key}: LOCAL_RANK {d.local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not d.enabled:
        yield d, device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=d.rank, world_size=d.world,
                            timeout=GROUP_TIMEOUT)
    log.info("rank %d of %d on %s", d.rank, d.world, device)
    try:
        yield d, device
    except RuntimeError as e:
        # A rank waiting in a collective when another rank stops (its own one-line error, a kill): one line here,
        # not a backend traceback per waiting rank that buries the error that matters. gloo raises a plain
        # RuntimeError for it, NCCL a DistError; any other RuntimeError is a bug and keeps its traceback.
        if not (isinstance(e, dist.DistError) or PEER_GONE.search(str(e))):
            raise
        raise DataError(f"rank {d.rank}: stopped: another rank of the run failed or was stopped (its error is "
                        "above)") from None
    finally:
        dist.destroy_process_group()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: bool, amp_dtype: str = "bf16"):
    """Autocast (bf16 or fp16) on CUDA when asked; CPU always runs fp32 (CPU autocast is slower, less exact)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=AMP_DTYPES[amp_dtype])
    return nullcontext()
