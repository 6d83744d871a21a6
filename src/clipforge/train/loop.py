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
from torch.utils.data import DataLoader, Dataset

from .. import distributed as D
from ..errors import ClipforgeError
from ..schedule import TrainConfig
from . import options
from .cadence import Cadence, Plan
from .checkpoint import (
    CHECKPOINT_DIR,
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_files,
)
from .fast import (
    adamw_kwargs,
    attention_kernel,
    longest_sequence,
    resolve_amp,
    resolve_attention,
)
from .finite import FiniteGuard
from .loss import ClipLoss, ClipStep, clamp_logit_scale_, logit_scale_param
from .optim import cosine_with_warmup, param_groups
from .runlog import RunLog, scalar
from .sampler import ResumableSampler, ResumeView, StatefulBatchSampler
from .step import (
    EvalFn,
    StepFn,
    autocast,
    disable_grad_checkpointing,
    enable_grad_checkpointing,
    grad_scaler,
    run_eval,
    to_device,
    wrap_step,
)

log = logging.getLogger("clipforge.train")

SamplerFactory = Callable[[D.DistInfo, int], Any]
CHECKPOINT_FORMAT = "clipforge.train/1"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate_config(cfg: TrainConfig, info: D.DistInfo) -> None:
    """Refuse settings no run can start from (one line naming the field)."""
    if cfg.steps < 0:
        raise ClipforgeError(f"steps must be >= 0, got {cfg.steps}")
    if cfg.batch_size % info.world_size:
        raise ClipforgeError(f"batch size {cfg.batch_size} does not split over {info.world_size} ranks")
    if cfg.fixed_logit_scale is not None and not 1.0 <= cfg.fixed_logit_scale <= 100.0:
        raise ClipforgeError(f"fixed_logit_scale must lie in [1, 100], got {cfg.fixed_logit_scale}")
    resolve_attention(cfg.attention, "off", info.device)  # an unknown setting fails here, before any work


def _make_sampler(batch_sampler: Any, dataset: Dataset, cfg: TrainConfig, info: D.DistInfo, per_rank: int) -> Any:
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


class _Trainer:
    """One `train()` call: what it built (setup), where it stands (what a checkpoint holds), and its steps.

    Once `start` has set the restored RNG state, nothing draws from the global RNGs but the step itself
    (the loader has its own generator, evaluation forks them), so a resumed run continues the same streams.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: Path, info: D.DistInfo,
                 batch_sampler: Any, step_fn: StepFn | None) -> None:
        """Setup: device, freezing, optimizer, schedule, sampler and step (nothing here restores or logs)."""
        self.model, self.cfg, self.info, self.out_dir = model, cfg, info, out_dir
        self.ckpt_dir = out_dir / CHECKPOINT_DIR
        self._scaler_state: dict[str, Any] | None = None  # a restored fp16 loss scaler's
        self.plan = Plan.of(cfg, info)
        self.cadence = Cadence.of(cfg, info)  # when to checkpoint: steps or rank 0's wall clock
        model.to(info.device)
        frozen = list(cfg.frozen or [])
        if cfg.fixed_logit_scale is not None:
            frozen.append(_fix_logit_scale(model, cfg.fixed_logit_scale))
        groups = param_groups(model, cfg.trainable, frozen, cfg.weight_decay, cfg.decay_exclusions)
        self.trainable = [p for g in groups for p in g["params"]]
        self.named_trainable = [(n, p) for g in groups for n, p in zip(g["param_names"], g["params"])]
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(model)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                           **adamw_kwargs(cfg.optimizer, self.trainable))
        self.scheduler = cosine_with_warmup(self.optimizer, self.plan.warmup, cfg.steps, cfg.min_lr_ratio)
        self.sampler = ResumeView(_make_sampler(batch_sampler, dataset, cfg, info, self.plan.per_rank))
        if step_fn is None:
            step_fn = ClipStep(ClipLoss(cfg.local_loss, cfg.gather_with_grad, cfg.label_smoothing),
                               fixed_logit_scale=cfg.fixed_logit_scale or 100.0)
        self.step_fn = step_fn
        # Where the run stands: all of it goes into a checkpoint.
        self.step, self.passes, self.stopped = 0, 0, False
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.resumed_from: Path | None = None
        self.data_iter: Iterator[Any] | None = None
        self.run_log = RunLog()  # log.jsonl: opened by `start` on rank 0
        self.bar: Any = None  # a tqdm bar, rank 0 with `progress` only

    def restore(self, resume: str | os.PathLike | None) -> Any:
        """Load the checkpoint `resume` names, if any; return this rank's RNG state (set last, by `start`) or None."""
        info, path = self.info, resolve_resume(resume, self.out_dir)
        if resume is not None and path is None:
            log.warning("resume=%r: no checkpoint in %s, starting fresh", str(resume), self.ckpt_dir)
        if path is None:
            if info.is_main and step_files(self.ckpt_dir):
                log.warning("starting fresh in %s: its existing checkpoints will be superseded", self.out_dir)
            return None
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ClipforgeError(f"{path} is not a clipforge training checkpoint")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self._scaler_state = state.get("grad_scaler")
        self.step, self.passes = int(state["step"]), int(state["passes"])
        self.stopped = bool(state.get("stopped", False))
        self.history = [(int(s), dict(m)) for s, m in state.get("eval_history", [])]
        self.resumed_from = path
        restored_rng = None
        if len(state["rng"]) == info.world_size:
            restored_rng = state["rng"][info.rank]
        else:
            log.warning("checkpoint was written by %d ranks, now %d: RNG streams restart from the seed",
                        len(state["rng"]), info.world_size)
        if info.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return restored_rng

    def start(self, dataset: Dataset, collate_fn: Callable | None, progress: bool, restored_rng: Any) -> None:
        """The loader, the (DDP / compiled) step module, log.jsonl and the bar; then the restored RNG state."""
        cfg, info = self.cfg, self.info
        self.loader_gen = torch.Generator()
        from ..data.loader import (  # each pass ends with the datasets' skip reports
            reporting,
            worker_count,
        )
        self.loader = reporting(DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate_fn,
                                           num_workers=worker_count(cfg.num_workers),
                                           pin_memory=info.device.type == "cuda", generator=self.loader_gen), dataset)
        self.runner = wrap_step(self.model, self.step_fn, cfg, info)
        if info.is_main:
            self.run_log = RunLog(self.out_dir / "log.jsonl", None if self.resumed_from is None else self.step)
        if progress and info.is_main:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.autocast = autocast(cfg.amp, info.device)
        self.scaler = grad_scaler(cfg.amp, info.device)
        if self.scaler is not None and self._scaler_state is not None:
            self.scaler.load_state_dict(self._scaler_state)
        self.kernel = resolve_attention(cfg.attention, resolve_amp(cfg.amp, info.device), info.device,
                                        longest_sequence(self.model))
        if restored_rng is not None:
            set_rng_state(restored_rng)  # last: nothing above may draw from the RNGs after this

    def run(self, eval_fn: EvalFn | None, until: Callable[[list[tuple[int, dict[str, Any]]]], bool] | None) -> None:
        """Step until `cfg.steps` or a stop; log, evaluate and save where the plan says; check the end state."""
        self.model.train()
        self.guard = FiniteGuard(self.cfg, self.step, self.resumed_from)
        self.loss_sum = torch.zeros((), device=self.info.device)
        self.window, self.t0 = 0, time.perf_counter()
        self.run_t0 = self.t0  # `elapsed_s` in log.jsonl: wall seconds since this invocation started training
        self.cadence.start(self.step)
        while self.step < self.cfg.steps and not self.stopped:
            logs, grad_norm = self._train_step(self._next_batch())
            if self.plan.logs(self.step):
                self._log(logs, grad_norm)
            if eval_fn is not None and self.plan.evaluates(self.step):
                self._evaluate(eval_fn, until)
            if self.cadence.due(self.step, self.stopped):
                self._checkpoint()
            if self.bar is not None:
                self.bar.update(1)
        self._check_state()  # never return nan

    def close(self) -> None:
        """Close the bar and log.jsonl (on every exit, errors included)."""
        if self.bar is not None:
            self.bar.close()
        self.run_log.close()

    def _next_batch(self) -> Any:
        """The next batch, on the device; a new pass (its own worker seeds) when the last one ended."""
        batch = None
        for _ in range(2):  # a pass may end right at a checkpoint; the next one must not be empty
            if self.data_iter is None:
                # Worker seeds come from this private generator, reseeded per pass: the global RNG stays untouched.
                self.loader_gen.manual_seed(self.cfg.seed * 1_000_003 + self.passes * 7919 + self.info.rank)
                self.passes += 1
                self.data_iter = iter(self.loader)
            batch = next(self.data_iter, None)
            if batch is not None:
                break
            self.data_iter = None
        if batch is None:
            raise ClipforgeError("the batch sampler yielded no batches")
        self.sampler.consumed += 1
        return to_device(batch, self.info.device)

    def _train_step(self, batch: Any) -> tuple[dict[str, Any], Tensor | None]:
        """One optimizer step; returns the step's logs and its gradient norm (None when not clipping)."""
        cfg, model = self.cfg, self.model
        self.optimizer.zero_grad(set_to_none=True)
        # The backward runs under the step's attention kernel too: activation checkpointing recomputes the
        # forward there, and must see the kernel the forward saw (evaluation keeps the model's own kernel).
        with attention_kernel(model, self.kernel):
            with self.autocast:
                loss, logs = self.runner(batch)
            grad_norm = None
            if self.scaler is not None:  # fp16: scaled backward, unscaled before clipping, a step skipped on inf
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        if cfg.grad_clip is not None and cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        clamp_logit_scale_(model)
        self.step += 1
        self.loss_sum += loss.detach().float()
        self.window += 1
        return logs, grad_norm

    def _log(self, logs: dict[str, Any], grad_norm: Tensor | None) -> None:
        """A log line: the rank-mean loss since the last one, lr, logit scale, throughput and the step's logs."""
        mean_loss = D.all_reduce_mean(self.loss_sum / self.window)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        scale = logit_scale_param(self.model)
        record = {"step": self.step, "loss": mean_loss.item(), "lr": self.scheduler.get_last_lr()[0],
                  "logit_scale": math.exp(scale.item()) if scale is not None else None,
                  "samples_per_s": self.cfg.batch_size * self.window / elapsed,
                  "elapsed_s": round(time.perf_counter() - self.run_t0, 3)}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        record.update({k: scalar(v) for k, v in logs.items()})
        self.run_log.write(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        self.guard.check_logged(record["loss"], self.step, record["lr"])  # after the line: log.jsonl shows it
        self.loss_sum.zero_()
        self.window, self.t0 = 0, time.perf_counter()

    def _evaluate(self, eval_fn: EvalFn, until: Callable[[list[tuple[int, dict[str, Any]]]], bool] | None) -> None:
        """Run `eval_fn`, log and record its metrics, and ask `until` whether to stop."""
        metrics = run_eval(eval_fn, self.model, self.step, self.info)
        if metrics:
            self.run_log.write({"step": self.step, **{f"eval/{k}": scalar(v) for k, v in metrics.items()}})
        self.history.append((self.step, {k: scalar(v) for k, v in (metrics or {}).items()}))
        if until is not None and until(self.history):
            self.stopped = True
            self.run_log.write({"step": self.step, "stopped": True})

    def _checkpoint(self) -> None:
        """Check the state is finite, then rank 0 writes it (pruning the oldest); every rank waits for the write."""
        self._check_state()
        t = time.perf_counter()
        state = self._state()
        if self.info.is_main:
            path = save_checkpoint(state, self.ckpt_dir, self.step, keep=self.cfg.keep_checkpoints)
            log.info("checkpoint %s written in %.1f s", path, time.perf_counter() - t)
        self.guard.saved(self.ckpt_dir / f"step_{self.step}.pt")  # every rank, so all raise the same line
        del state
        D.barrier()
        self.cadence.saved(self.step)

    def _check_state(self) -> None:
        """The finite guard's check of the loss since the last log line and of every trainable parameter."""
        self.guard.check_state(self.loss_sum, self.window, self.named_trainable, self.step,
                               self.scheduler.get_last_lr()[0])

    def _state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (every rank's RNG states included)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            # a pass under way is redone from its start (the sampler skips what it consumed)
            "passes": self.passes - 1 if self.data_iter is not None else self.passes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": D.all_gather_object(rng_state()),
            "world_size": self.info.world_size,
            "stopped": self.stopped,
            "eval_history": [[s, m] for s, m in self.history],
            "config": asdict(self.cfg),
        }


def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | os.PathLike, *,
          batch_sampler: StatefulBatchSampler | SamplerFactory | None = None, collate_fn: Callable | None = None,
          step_fn: StepFn | None = None,
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
    Rank 0 writes `out_dir/log.jsonl` and `out_dir/checkpoints/` (when: `cfg.save_every` steps or
    `cfg.save_every_s` wall seconds since the last one, whichever first, and at the end; train/cadence.py).
    """
    info = D.init_distributed()
    cfg = options.apply(cfg)  # the command's execution options (memory, kernels): train/options.py
    validate_config(cfg, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Each rank its own stream, so dropout masks differ across ranks.
    seed_everything(cfg.seed + info.rank)
    was_training = model.training
    trainer = _Trainer(model, dataset, cfg, Path(out_dir), info, batch_sampler, step_fn)
    restored_rng = trainer.restore(resume)
    trainer.start(dataset, collate_fn, progress, restored_rng)
    try:
        trainer.run(eval_fn, until)
    finally:
        trainer.close()
    D.barrier()
    if cfg.grad_checkpointing:
        disable_grad_checkpointing(model)
    model.train(was_training)
    return model
