"""The one training loop: every stage of CLIP-MoE and of learngene training runs through `train()`.

Methods plug in through `step_fn(model, batch) -> (loss, logs)` (the default is the CLIP contrastive
step), an optional batch sampler (anything with the `StatefulBatchSampler` contract) and a collate
function. The loop owns the rest: freezing, AdamW with warmup-cosine, clipping, activation
checkpointing, bf16 autocast and its attention kernel, DDP, logging, checkpoints, and exact resumption.

Resumption is bit-identical on the CPU because a checkpoint holds the sampler position and every
RNG state (per rank), and nothing else in the loop draws from the global RNGs: the DataLoader gets
its own generator, and evaluation runs inside a forked RNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..errors import ClipforgeError
from .. import distributed as D
from .fast import CompiledStep, adamw_kwargs, attention_kernel, longest_sequence, resolve_amp, resolve_attention
from .config import TrainConfig
from .checkpoint import (CHECKPOINT_DIR, load_checkpoint, resolve_resume, rng_state, save_checkpoint,
                         set_rng_state, step_files)
from .loss import ClipLoss, ClipStep, clamp_logit_scale_, logit_scale_param
from .optim import cosine_with_warmup, param_groups
from .sampler import ResumableSampler, ResumeView, StatefulBatchSampler

log = logging.getLogger("clipforge.train")

StepFn = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module, int], "dict[str, Any] | None"]
SamplerFactory = Callable[[D.DistInfo, int], Any]

CHECKPOINT_FORMAT = "clipforge.train/1"


class _StepModule(nn.Module):
    """Runs `step_fn` as a module's forward, so DDP sees (and syncs) whatever the step touches,
    even when the step calls model methods like `get_image_features` instead of `forward`."""

    def __init__(self, model: nn.Module, step_fn: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        return self.step_fn(self.model, batch)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if resolve_amp(amp, device) == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _scalar(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().float().item() if v.numel() == 1 else v.detach().float().tolist()
    return v


def validate_config(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Refuse settings no run can start from (one line naming the field)."""
    if cfg.steps < 0:
        raise ClipforgeError(f"steps must be >= 0, got {cfg.steps}")
    if cfg.batch_size % info.world_size:
        raise ClipforgeError(f"batch size {cfg.batch_size} does not split over {info.world_size} ranks")
    if cfg.fixed_logit_scale is not None and not 1.0 <= cfg.fixed_logit_scale <= 100.0:
        raise ClipforgeError(f"fixed_logit_scale must lie in [1, 100], got {cfg.fixed_logit_scale}")
    resolve_attention(cfg.attention, "off", info.device)  # an unknown setting fails here, before any work


def _make_sampler(batch_sampler: Any, dataset: Dataset, cfg: TrainConfig, info: D.DistInfo) -> Any:
    per_rank = cfg.batch_size // info.world_size
    if batch_sampler is None:
        return ResumableSampler(len(dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                batch_size_per_rank=per_rank, drop_last=True)
    if callable(batch_sampler) and not hasattr(batch_sampler, "__iter__"):
        return batch_sampler(info, per_rank)
    return batch_sampler


def _fix_logit_scale(model: nn.Module, value: float) -> str:
    """Set exp(logit_scale) = value and return the parameter's name (to freeze it)."""
    for name, p in model.named_parameters():
        if name == "logit_scale" or name.endswith(".logit_scale"):
            with torch.no_grad():
                p.fill_(math.log(value))
            return name
    raise ClipforgeError("fixed_logit_scale is set but the model has no logit_scale parameter")


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log lines past `last_step` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
    path.write_text("".join(k + "\n" for k in kept))


def _nonfinite_params(params: list[Tensor]) -> Tensor:
    """A 0-d float tensor on the parameters' device: 1 when any of `params` holds a nan or inf, else 0.

    No host sync: the caller reads it together with the loss. The max-abs norm of a finite tensor never
    overflows (a 2-norm can) and is nan/inf exactly when the tensor holds one.
    """
    if not params:
        return torch.zeros(())
    try:
        norms = torch._foreach_norm(params, math.inf)  # one fused kernel per dtype/device group
    except (AttributeError, RuntimeError, NotImplementedError):  # a torch without it, or an odd dtype
        norms = [torch.linalg.vector_norm(p.detach(), math.inf) for p in params]
    return (~torch.stack([n.float() for n in norms]).isfinite().all()).float()


class _FiniteGuard:
    """Stops training at the first non-finite loss or parameter, with one line saying where and what to do.

    The loss is checked where the loop syncs anyway (each log line); the loss and every trainable
    parameter before each checkpoint and at the end, one host sync each, so a non-finite state is never
    written and never returned. Under DDP the flags are all-reduced, so every rank raises together.
    """

    def __init__(self, cfg: TrainConfig, step: int, kept: Path | None) -> None:
        self.cfg = cfg
        self.loss_ok = self.params_ok = step  # the last steps known to be finite
        self.kept = kept  # the last checkpoint known to be finite (the resumed one, then each written)
        self.last_loss = math.nan  # the last logged loss, named when no step ran since

    def check_logged(self, mean_loss: float, step: int, lr: float) -> None:
        """After a log line: `mean_loss` is the rank-mean loss since the previous log line."""
        if not math.isfinite(mean_loss):
            raise ClipforgeError(self._message(f"the loss became {mean_loss}", self.loss_ok, step, lr))
        self.loss_ok, self.last_loss = step, mean_loss

    def check_state(self, loss_sum: Tensor, window: int, trainable: list[tuple[str, Tensor]], step: int,
                    lr: float) -> None:
        """Before a checkpoint and at the end: the loss since the last log line and every trainable parameter."""
        if self.loss_ok == self.params_ok == step:
            return
        flags = torch.stack([loss_sum.float() / max(window, 1),
                             _nonfinite_params([p for _, p in trainable]).to(loss_sum.device)])
        loss, bad_params = D.all_reduce_mean(flags).tolist()  # the one sync
        if not math.isfinite(loss):
            raise ClipforgeError(self._message(f"the loss became {loss}", self.loss_ok, step, lr))
        if bad_params > 0:
            # The error path may sync freely: name the first offending parameter (on this rank).
            name = next((n for n, p in trainable if not bool(p.detach().isfinite().all())), "a parameter")
            shown = loss if window else self.last_loss  # no step since the log line: its loss
            raise ClipforgeError(self._message(f"parameter {name} became non-finite (loss {shown:.4g})",
                                               self.params_ok, step, lr))
        self.loss_ok = self.params_ok = step

    def saved(self, path: Path) -> None:
        """`path` was written after a passing `check_state`: the checkpoint to name from now on."""
        self.kept = path

    def _message(self, what: str, since: int, step: int, lr: float) -> str:
        kept = (f"the last finite checkpoint {self.kept} is kept" if self.kept is not None
                else "there is no finite checkpoint")
        return (f"training diverged between step {since} and step {step}: {what} at lr {lr:.3g}; {kept} and "
                f"no model was saved; retry with a lower --lr (was {self.cfg.lr:g})")


def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | os.PathLike, *,
          batch_sampler: StatefulBatchSampler | SamplerFactory | None = None, collate_fn: Callable | None = None, step_fn: StepFn | None = None,
          eval_fn: EvalFn | None = None, until: Callable[[list[tuple[int, dict[str, Any]]]], bool] | None = None,
          resume: str | os.PathLike | None = None, progress: bool = True) -> nn.Module:
    """Train `model` on `dataset` for `cfg.steps` optimizer steps; return it (unwrapped, mode as on entry).

    `dataset`: a map-style dataset; `collate_fn` turns a list of its items into a batch (default:
    torch's default collate, which stacks dicts of tensors). `batch_sampler`: None (a
    `ResumableSampler` over the dataset), a stateful batch sampler, or a factory
    `(DistInfo, batch_size_per_rank) -> sampler`. `step_fn(model, batch) -> (loss, logs)` gets the
    unwrapped model and a device-resident batch; `logs` values (numbers or scalar tensors) are logged.
    `eval_fn(model, step) -> metrics` runs on every rank in eval mode without grad; rank 0 logs it.
    `until(history) -> bool`, called after each evaluation with every [(step, metrics)] so far (kept
    in the checkpoints, so a resumed run sees the whole history), ends training early when True (e.g.
    `train.plateau.Plateau`): a last checkpoint is saved marked stopped, so resuming it trains no
    further. The run then has fewer than `cfg.steps` steps.
    `resume`: None, "latest" (fresh start if there is none) or a checkpoint file or folder.
    Rank 0 writes `out_dir/log.jsonl` and `out_dir/checkpoints/`.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    info = D.init_distributed()
    validate_config(cfg, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Each rank its own stream, so dropout masks differ across ranks.
    seed_everything(cfg.seed + info.rank)

    was_training = model.training
    model.to(info.device)
    frozen = list(cfg.frozen or [])
    if cfg.fixed_logit_scale is not None:
        frozen.append(_fix_logit_scale(model, cfg.fixed_logit_scale))
    groups = param_groups(model, cfg.trainable, frozen, cfg.weight_decay, cfg.decay_exclusions)
    trainable = [p for g in groups for p in g["params"]]
    named_trainable = [(n, p) for g in groups for n, p in zip(g["param_names"], g["params"])]
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  **adamw_kwargs(cfg.optimizer, trainable))
    warmup = cfg.warmup if cfg.max_warmup_frac >= 1 else min(cfg.warmup, int(cfg.max_warmup_frac * cfg.steps))
    scheduler = cosine_with_warmup(optimizer, warmup, cfg.steps, cfg.min_lr_ratio)
    sampler = ResumeView(_make_sampler(batch_sampler, dataset, cfg, info))
    if step_fn is None:
        loss_fn = ClipLoss(cfg.local_loss, cfg.gather_with_grad, cfg.label_smoothing)
        step_fn = ClipStep(loss_fn, fixed_logit_scale=cfg.fixed_logit_scale or 100.0)

    step, passes, restored_rng, stopped = 0, 0, None, False
    history: list[tuple[int, dict[str, Any]]] = []
    ckpt_path = resolve_resume(resume, out_dir)
    if resume is not None and ckpt_path is None:
        log.warning("resume=%r: no checkpoint in %s, starting fresh", str(resume), ckpt_dir)
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ClipforgeError(f"{ckpt_path} is not a clipforge training checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step, passes = int(state["step"]), int(state["passes"])
        stopped = bool(state.get("stopped", False))
        history = [(int(s), dict(m)) for s, m in state.get("eval_history", [])]
        if len(state["rng"]) == info.world_size:
            restored_rng = state["rng"][info.rank]
        else:
            log.warning("checkpoint was written by %d ranks, now %d: RNG streams restart from the seed",
                        len(state["rng"]), info.world_size)
        if info.is_main:
            log.info("resumed from %s at step %d", ckpt_path, step)
    elif info.is_main and step_files(ckpt_dir):
        log.warning("starting fresh in %s: its existing checkpoints will be superseded", out_dir)

    loader_gen = torch.Generator()
    from ..data.loader import reporting, worker_count  # each pass ends with the datasets' skip reports
    loader = reporting(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                  num_workers=worker_count(cfg.num_workers), pin_memory=info.device.type == "cuda",
                                  generator=loader_gen), dataset)
    runner: nn.Module = _StepModule(model, step_fn)
    if info.world_size > 1:
        ddp_kwargs: dict[str, Any] = {"find_unused_parameters": cfg.find_unused_parameters}
        if info.device.type == "cuda":
            ddp_kwargs["device_ids"] = [info.device.index]
        runner = DistributedDataParallel(runner, **ddp_kwargs)
    if cfg.compile:  # around DDP, so dynamo splits the graph at DDP's gradient buckets
        runner = CompiledStep(runner)

    log_path = out_dir / "log.jsonl"
    log_file = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path is None:
            log_path.write_text("")
        else:
            _trim_log(log_path, step)
        log_file = open(log_path, "a")
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)

    autocast = _autocast(cfg.amp, info.device)
    kernel = resolve_attention(cfg.attention, resolve_amp(cfg.amp, info.device), info.device, longest_sequence(model))
    if restored_rng is not None:
        set_rng_state(restored_rng)  # last: nothing above may draw from the RNGs after this

    def new_epoch_iter() -> Iterator[Any]:
        nonlocal passes
        # Worker seeds come from this private generator, reseeded per pass: the global RNG stays untouched.
        loader_gen.manual_seed(cfg.seed * 1_000_003 + passes * 7919 + info.rank)
        passes += 1
        return iter(loader)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "passes": passes - 1 if data_iter is not None else passes,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": D.all_gather_object(rng_state()),
            "world_size": info.world_size,
            "stopped": stopped,
            "eval_history": [[s, m] for s, m in history],
            "config": asdict(cfg),
        }

    model.train()
    guard = _FiniteGuard(cfg, step, ckpt_path)
    data_iter: Iterator[Any] | None = None
    loss_sum = torch.zeros((), device=info.device)
    window, t0 = 0, time.perf_counter()
    run_t0 = t0  # `elapsed_s` in log.jsonl: wall seconds since this invocation started training
    try:
        while step < cfg.steps and not stopped:
            batch = None
            for _ in range(2):  # a pass may end right at a checkpoint; the next one must not be empty
                if data_iter is None:
                    data_iter = new_epoch_iter()
                batch = next(data_iter, None)
                if batch is not None:
                    break
                data_iter = None
            if batch is None:
                raise ClipforgeError("the batch sampler yielded no batches")
            sampler.consumed += 1
            batch = _to_device(batch, info.device)

            optimizer.zero_grad(set_to_none=True)
            with autocast, attention_kernel(model, kernel):  # evaluation keeps the model's own kernel
                loss, logs = runner(batch)
            loss.backward()
            grad_norm = None
            if cfg.grad_clip is not None and cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            clamp_logit_scale_(model)
            step += 1
            loss_sum += loss.detach().float()
            window += 1

            if cfg.log_every > 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                mean_loss = D.all_reduce_mean(loss_sum / window)
                elapsed = max(time.perf_counter() - t0, 1e-9)
                scale = logit_scale_param(model)
                record = {"step": step, "loss": mean_loss.item(), "lr": scheduler.get_last_lr()[0],
                          "logit_scale": math.exp(scale.item()) if scale is not None else None,
                          "samples_per_s": cfg.batch_size * window / elapsed,
                          "elapsed_s": round(time.perf_counter() - run_t0, 3)}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                record.update({k: _scalar(v) for k, v in logs.items()})
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                guard.check_logged(record["loss"], step, record["lr"])  # after the line: log.jsonl shows it
                loss_sum.zero_()
                window, t0 = 0, time.perf_counter()

            if eval_fn is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics = _run_eval(eval_fn, model, step, info)
                if log_file is not None and metrics:
                    log_file.write(json.dumps({"step": step, **{f"eval/{k}": _scalar(v)
                                                                for k, v in metrics.items()}}) + "\n")
                    log_file.flush()
                history.append((step, {k: _scalar(v) for k, v in (metrics or {}).items()}))
                if until is not None and until(history):
                    stopped = True
                    if log_file is not None:
                        log_file.write(json.dumps({"step": step, "stopped": True}) + "\n")
                        log_file.flush()

            if cfg.save_every > 0 and (step % cfg.save_every == 0 or step == cfg.steps or stopped):
                guard.check_state(loss_sum, window, named_trainable, step, scheduler.get_last_lr()[0])
                state = checkpoint_state()
                if info.is_main:
                    save_checkpoint(state, ckpt_dir, step, keep=cfg.keep_checkpoints)
                guard.saved(ckpt_dir / f"step_{step}.pt")  # every rank, so all raise the same line
                del state
                D.barrier()
            if bar is not None:
                bar.update(1)
        guard.check_state(loss_sum, window, named_trainable, step, scheduler.get_last_lr()[0])  # never return nan
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    D.barrier()
    if cfg.grad_checkpointing:
        disable_grad_checkpointing(model)
    model.train(was_training)
    return model


def _run_eval(eval_fn: EvalFn, model: nn.Module, step: int, info: D.DistInfo) -> dict[str, Any] | None:
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
