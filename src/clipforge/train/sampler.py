"""A seeded, resumable batch sampler: the same global batches in the same order, at any world size.

Epoch `e` is the permutation `randperm(n, generator=manual_seed(seed + e))`, cut into global batches
of `batch_size_per_rank × world_size`; rank `r` takes slice `r` of each. The state is just
(epoch, position), so a run can stop anywhere and continue with exactly the batches it would have
seen. Any batch sampler the training loop takes (e.g. the MoE cluster sampler) follows the same
contract: iterating yields the rest of the current epoch from the stored state and then moves the
state to the start of the next epoch; `state_dict()` / `load_state_dict()` hold plain ints.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import ClipforgeError

log = logging.getLogger("clipforge.train")


@runtime_checkable
class StatefulBatchSampler(Protocol):
    """What the training loop needs from a batch sampler."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ResumableSampler:
    """Per-rank index batches from a per-epoch seeded permutation; resumable at any batch."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, batch_size_per_rank: int = 1,
                 drop_last: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ClipforgeError(f"rank {rank} is outside world size {world_size}")
        if batch_size_per_rank < 1:
            raise ClipforgeError(f"batch size per rank must be positive, got {batch_size_per_rank}")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.batch_size_per_rank = batch_size_per_rank
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # global batches already handed out in this epoch
        if len(self) == 0:
            raise ClipforgeError(
                f"dataset of {n} samples is smaller than one global batch of {self.global_batch_size}")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size_per_rank * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (each rank gets this many)."""
        if self.drop_last:
            return self.n // self.global_batch_size
        return -(-self.n // self.global_batch_size) if self.n else 0

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=gen)
        padded = len(self) * self.global_batch_size
        if padded > self.n:
            # Without drop_last, top up the last batch from the epoch's start so every rank
            # gets a full, equally sized batch (a gather needs equal shapes).
            perm = torch.cat([perm, perm.repeat(padded // self.n + 1)[: padded - self.n]])
        return perm

    def __iter__(self) -> Iterator[list[int]]:
        perm = self._permutation(self.epoch)
        lo = self.rank * self.batch_size_per_rank
        while self.position < len(self):
            start = self.position * self.global_batch_size + lo
            batch = perm[start:start + self.batch_size_per_rank].tolist()
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class ResumeView:
    """Wraps a stateful batch sampler so checkpoints record what the *loop* consumed.

    DataLoader workers prefetch, so the sampler's own position runs ahead of training. We record the
    sampler state when an epoch's iteration starts plus the batches consumed since; resuming
    restores that state and skips as many index batches (no data is loaded for them).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.start = self._inner_state()
        self.consumed = 0
        self._skip = 0

    def _inner_state(self) -> Any:
        return copy.deepcopy(self.inner.state_dict()) if hasattr(self.inner, "state_dict") else None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        self.start = self._inner_state()
        skip, self._skip = self._skip, 0
        self.consumed = skip
        it = iter(self.inner)
        for _ in range(skip):
            if next(it, None) is None:
                return
        yield from it

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("start") is None or not hasattr(self.inner, "load_state_dict"):
            log.warning("the batch sampler has no saved state; resuming from its current position")
            return
        self.inner.load_state_dict(state["start"])
        self.start = copy.deepcopy(state["start"])
        self._skip = int(state["consumed"])
