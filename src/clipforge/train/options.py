"""Execution options: how a training run executes (memory, kernels), never what it is set to compute.

A command sets them once (`clipforge moe dmu --grad-checkpointing`, `learngene extract --compile`) and every
training run it starts takes them (`train()` applies `apply`), however deep in a method the run is made:
MCL stages, router training, baselines, extraction, descendants' pre-training. They stay out of the methods'
configs and result records, so a run resumed with other execution options is the same run.

* `grad_checkpointing`: recompute activations in the backward pass (exact; less memory, ~30 % more time).
* `compile`: `torch.compile` the step (a CLIP-MoE then uses its grouped dispatch, which compiles as one graph).
* `optimizer`: the AdamW kernel ("auto", "fused", "foreach", "for-loop").
* `save_every`, `save_every_s`: the checkpoint cadence (steps, wall seconds; `train.cadence`): when a run can
  be resumed from, never what it computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..errors import ClipforgeError
from ..schedule import TrainConfig

FIELDS = ("grad_checkpointing", "compile", "optimizer", "save_every", "save_every_s")
OPTIMIZERS = ("auto", "fused", "foreach", "for-loop")
_ACTIVE: dict[str, Any] = {}


@contextmanager
def execution(**options: Any) -> Iterator[dict[str, Any]]:
    """Context: the given options (None or False: leave the run's own setting) for every `train()` inside it."""
    unknown = set(options) - set(FIELDS)
    if unknown:
        raise ClipforgeError(f"unknown execution options: {', '.join(sorted(unknown))}")
    if options.get("optimizer") not in (None, *OPTIMIZERS):
        raise ClipforgeError(f"optimizer {options['optimizer']!r} is not one of {', '.join(OPTIMIZERS)}")
    before = dict(_ACTIVE)
    if options.get("save_every") is not None and options["save_every"] < 1:
        raise ClipforgeError(f"--save-every must be at least 1, got {options['save_every']}")
    _ACTIVE.update({k: v for k, v in options.items() if v is not None and v is not False})  # 0 s is a setting
    try:
        yield dict(_ACTIVE)
    finally:
        _ACTIVE.clear()
        _ACTIVE.update(before)


def apply(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the active execution options."""
    return replace(cfg, **_ACTIVE) if _ACTIVE else cfg
