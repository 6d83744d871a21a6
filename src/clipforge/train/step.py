"""How `train()` runs the model: the step as a module (under DDP, compiled), activation checkpointing,
bf16 autocast, batches onto the device, and evaluation inside forked RNGs.

Nothing here draws from the global RNGs outside the step itself: evaluation forks and restores them,
so a run with evaluation trains exactly as one without.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as D
from ..errors import ClipforgeError
from ..schedule import TrainConfig
from .fast import CompiledStep, resolve_amp

StepFn = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module, int], "dict[str, Any] | None"]


class _StepModule(nn.Module):
    """Runs `step_fn` as a module's forward, so DDP sees (and syncs) whatever the step touches,
    even when the step calls model methods like `get_image_features` instead of `forward`."""

    def __init__(self, model: nn.Module, step_fn: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        return self.step_fn(self.model, batch)


def wrap_step(model: nn.Module, step_fn: StepFn, cfg: TrainConfig, info: D.DistInfo) -> nn.Module:
    """`step_fn` as a module: under DDP when there are several ranks, compiled when `cfg.compile`."""
    runner: nn.Module = _StepModule(model, step_fn)
    if info.world_size > 1:
        ddp_kwargs: dict[str, Any] = {"find_unused_parameters": cfg.find_unused_parameters}
        if info.device.type == "cuda":
            ddp_kwargs["device_ids"] = [info.device.index]
        runner = DistributedDataParallel(runner, **ddp_kwargs)
    if cfg.compile:  # around DDP, so dynamo splits the graph at DDP's gradient buckets
        from ..models.clip_moe.moe_layer import set_dispatch

        set_dispatch(model, "grouped")  # a CLIP-MoE's sync-free, fixed-shape dispatch: no graph break per layer
        runner = CompiledStep(runner)
    return runner


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Turn on activation checkpointing (non-reentrant, so it composes with DDP and frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ClipforgeError(f"{type(model).__name__} does not support gradient checkpointing")


def disable_grad_checkpointing(model: nn.Module) -> None:
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(model, name):
            getattr(model, name)()
            return


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast where `amp` resolves to it on `device` (train.fast), else a no-op context."""
    mode = resolve_amp(amp, device)
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where `amp` resolves to fp16 (CUDA only: fp16 gradients underflow without one), else None."""
    return torch.amp.GradScaler(device.type) if resolve_amp(amp, device) == "fp16" else None


def to_device(x: Any, device: torch.device) -> Any:
    """`x` with every tensor inside its dicts, lists and tuples moved to `device`."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def run_eval(eval_fn: EvalFn, model: nn.Module, step: int, info: D.DistInfo) -> dict[str, Any] | None:
    """Evaluate in eval mode, without grad, inside forked RNGs so training's random streams are unchanged."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [info.device.index or 0] if info.device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return eval_fn(model, step)
    finally:
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
