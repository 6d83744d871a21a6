"""Process-group plumbing for torchrun: who am I, which device, and the few collectives training needs.

Everything here degrades to a no-op at world size 1, so single-process code (tests, a laptop run)
never needs a process group: `gather_with_grad(x)` returns `x`, `barrier()` returns at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, read from the torchrun environment."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


# The device a command's `--device` asked for (None: auto). One rule for every command: training,
# clustering, evaluation and reports all take their device from `dist_info()`.
_PREFERRED: list[torch.device | None] = [None]


@contextmanager
def preferred_device(device: str | torch.device | None) -> Iterator[None]:
    """Context: `dist_info()` (and so every training run, embedding pass and evaluation that asks it) uses
    `device`: None or "auto" = CUDA when available, else the CPU; "cuda" = this rank's GPU (cuda:LOCAL_RANK)."""
    before = _PREFERRED[0]
    _PREFERRED[0] = None if device in (None, "auto") else torch.device(device)
    try:
        yield
    finally:
        _PREFERRED[0] = before


def default_device(local_rank: int | None = None) -> torch.device:
    """The device this process runs models on: the preferred one (`preferred_device`), else CUDA when
    available, else the CPU. A CUDA device without an index is this rank's (cuda:LOCAL_RANK)."""
    if local_rank is None:
        local_rank = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    pref = _PREFERRED[0]
    if pref is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if pref.type == "cuda" and pref.index is None:
        return torch.device("cuda", local_rank)
    return pref


def dist_info(device: str | torch.device | None = None) -> DistInfo:
    """The rank layout from `RANK`, `LOCAL_RANK`, `WORLD_SIZE` (an initialised group wins over the env).

    The device is `default_device()` (the command's `--device`, else cuda:LOCAL_RANK when CUDA is
    available, else the CPU), unless `device` is given.
    """
    if is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if device is None:
        device = default_device(local_rank)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=torch.device(device))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group when `WORLD_SIZE` > 1 (nccl on CUDA, gloo on CPU) and return the layout.

    At world size 1 no group is created; an already initialised group is reused as is.
    """
    info = dist_info(device)
    if info.world_size > 1 and not is_initialized():
        if backend is None:
            backend = "nccl" if info.device.type == "cuda" else "gloo"
        if info.device.type == "cuda":
            # Pin the device first so nccl's communicators land on this rank's GPU.
            torch.cuda.set_device(info.device)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        info = dist_info(info.device)
    return info


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Every rank's loss may depend on every slice, so a slice's gradient is the sum over ranks.
        # all_reduce + slice works on every backend (gloo has no reduce_scatter).
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` [B, ...] from every rank in rank order, differentiably; `x` itself at world size 1.

    All ranks must pass the same shape.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank in rank order without a gradient path."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of `x` over ranks (a new tensor; `x` itself at world size 1)."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def all_gather_object(obj: T) -> list[T]:
    """`obj` from every rank, in rank order (`[obj]` at world size 1)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` as held by rank `src`, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if is_initialized():
        dist.destroy_process_group()
