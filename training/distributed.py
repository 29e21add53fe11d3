"""Training across processes: `normalcy train` under `torchrun --nproc-per-node N` (and `--nnodes`).

torchrun starts one process per GPU (or per CPU worker) and tells each its RANK, WORLD_SIZE and
LOCAL_RANK. The training loop then joins the process group (NCCL on GPUs, gloo on CPU), wraps the
model in DistributedDataParallel, gives each rank its shard of every epoch's permutation (the rule
of torch's DistributedSampler, for in-memory tensors), sums the validation score over the ranks so
that every rank takes the same early-stopping decision, agrees on the clock for time budgets, and
lets only rank 0 write checkpoints and the bundle. Run as one process, all of this is a no-op.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """This process's place in the process group (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def setup(*, cuda: bool) -> World:
    """Join torchrun's process group when this process was started by it with WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return current()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return current()


def teardown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per process: rank r on a host uses cuda:LOCAL_RANK."""
    if world.enabled and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` (whose forward gives the loss) when distributed."""
    if not world.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a permutation: padded by wrapping around to a multiple of the world size,
    then every world_size-th element from `rank`, so every rank takes the same number of steps."""
    if not world.enabled:
        return order
    total = math.ceil(len(order) / world.world_size) * world.world_size
    padded = order.repeat(math.ceil(total / len(order)))[:total]
    return padded[world.rank :: world.world_size]


def shard_size(n: int, world: World) -> int:
    return math.ceil(n / world.world_size)


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sums over all ranks (the values themselves in a world of one)."""
    if not world.enabled:
        return values
    device = torch.device("cuda", world.local_rank) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


class Clock:
    """Seconds since training started; across ranks, the slowest rank's, agreed at each `sync`, so
    time-dependent decisions (learning rate under a budget, stopping) are the same on every rank."""

    def __init__(self, world: World):
        self.world = world
        self.started = time.monotonic()
        self._agreed = 0.0

    def sync(self) -> None:
        if self.world.enabled:
            device = (
                torch.device("cuda", self.world.local_rank)
                if dist.get_backend() == "nccl"
                else "cpu"
            )
            tensor = torch.tensor(
                [time.monotonic() - self.started], dtype=torch.float64, device=device
            )
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            self._agreed = float(tensor.item())

    def elapsed(self) -> float:
        return self._agreed if self.world.enabled else time.monotonic() - self.started
