"""The training loop's non-finite checks: stop at the first nan/inf loss or parameter, saying where.

Kept apart from `train.loop` because it is one self-contained rule (what is checked, when, and the
line the user reads), and so that the loop reads as its steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .. import distributed as D
from ..errors import ClipforgeError
from ..schedule import TrainConfig


def nonfinite_params(params: list[Tensor]) -> Tensor:
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


class FiniteGuard:
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
                             nonfinite_params([p for _, p in trainable]).to(loss_sum.device)])
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
