"""When the training loop logs, evaluates and checkpoints.

`Plan` fixes the step cadences (logging, evaluation) before the first step. `Cadence` decides checkpoints:
every N steps or every S wall seconds, whichever comes first.

Both cadences count from the last checkpoint (or from where this invocation started: a fresh run, or the
checkpoint it resumed). The last step and an early stop always save, whenever checkpointing is on at all.

The write is collective (every rank gathers its RNG state and waits at a barrier), so every rank must
decide the same: the wall cadence reads rank 0's clock only. At world size 1 the clock is read every step
(a clock read, no device sync). Under DDP, rank 0 broadcasts its decision together with the step at which
it will next read its clock, planned from its mean step time, so the ranks meet in that collective only a
few times per interval instead of every step. The cadence decides only *when* a checkpoint is written,
never what training computes, so it may change between a run and its resumption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import distributed as D
from ..schedule import TrainConfig

# Under DDP, rank 0 reads its clock at least this many times per wall interval: that bounds how late a
# checkpoint comes when steps suddenly slow down, at the cost of one small broadcast per check.
CHECKS_PER_INTERVAL = 10


@dataclass(frozen=True)
class Plan:
    """How the loop batches and when it logs and evaluates: fixed once, before the first step."""

    steps: int
    per_rank: int  # each rank's share of the batch
    warmup: int
    log_every: int
    eval_every: int

    @classmethod
    def of(cls, cfg: TrainConfig, info: D.DistInfo) -> Plan:
        warmup = cfg.warmup if cfg.max_warmup_frac >= 1 else min(cfg.warmup, int(cfg.max_warmup_frac * cfg.steps))
        return cls(cfg.steps, cfg.batch_size // info.world_size, warmup, cfg.log_every, cfg.eval_every)

    def _due(self, every: int, step: int) -> bool:
        """Every `every` steps and at the last one; never when `every` is 0."""
        return every > 0 and (step % every == 0 or step == self.steps)

    def logs(self, step: int) -> bool:
        return self._due(self.log_every, step)

    def evaluates(self, step: int) -> bool:
        return self._due(self.eval_every, step)


def now() -> float:
    """Wall seconds on a monotonic clock: the one clock the cadence reads (tests patch it)."""
    return time.monotonic()


@dataclass
class Cadence:
    """The checkpoint decision of one `train()` call; `start` it, ask `due` after each step, tell it `saved`.

    `every`: steps between checkpoints (None: no step cadence; 0: never checkpoint at all). `every_s`: wall
    seconds between checkpoints (None or 0: no wall cadence). `broadcast(obj)` returns rank 0's `obj` on
    every rank; it is called only when `world_size` > 1.
    """

    every: int | None
    every_s: float | None
    steps: int  # the run's last step, which always saves
    world_size: int = 1
    is_main: bool = True
    broadcast: Callable[[Any], Any] = D.broadcast_object
    last_step: int = 0
    last_t: float = 0.0  # rank 0's clock at the last checkpoint (other ranks never read theirs)
    next_check: int = 1  # under DDP: the step at which the ranks next meet to ask rank 0's clock

    @classmethod
    def of(cls, cfg: TrainConfig, info: D.DistInfo) -> Cadence:
        return cls(cfg.save_every, cfg.save_every_s, cfg.steps, info.world_size, info.is_main)

    @property
    def enabled(self) -> bool:
        """Whether this run checkpoints at all (`every` 0 turns both cadences off)."""
        return self.every != 0 and (self.every is not None or bool(self.every_s))

    def start(self, step: int) -> None:
        """Count both cadences from `step`, now (the run's start, its resumed checkpoint, or the last save)."""
        self.last_step, self.last_t, self.next_check = step, now(), step + 1

    def saved(self, step: int) -> None:
        """A checkpoint of `step` is written (the interval starts after the write: its time is not training's)."""
        self.start(step)

    def due(self, step: int, stopped: bool) -> bool:
        """Whether to checkpoint after `step`: the same answer on every rank."""
        if not self.enabled:
            return False
        if stopped or step >= self.steps:
            return True
        if self.every is not None and step - self.last_step >= self.every:
            return True
        return bool(self.every_s) and self._wall_due(step)

    def _wall_due(self, step: int) -> bool:
        if self.world_size == 1:
            return now() - self.last_t >= (self.every_s or 0.0)
        if step < self.next_check:  # every rank skips the same steps: next_check came from rank 0
            return False
        due, self.next_check = self.broadcast(self.plan(step) if self.is_main else None)
        return bool(due)

    def plan(self, step: int) -> tuple[bool, int]:
        """Rank 0: whether the wall interval has passed, and the step at which to read the clock next."""
        interval, elapsed = self.every_s or 0.0, now() - self.last_t
        if elapsed >= interval:
            return True, step + 1
        per_step = elapsed / max(step - self.last_step, 1)  # the mean since the last checkpoint: evals included
        horizon = min(interval - elapsed, interval / CHECKS_PER_INTERVAL)
        ahead = math.ceil(horizon / per_step) if per_step > 0 else 1
        return False, step + max(1, ahead)
