"""Router training (docs/methods.md A.3): only the routers learn, on ordinary shuffled batches.

Loss: CLIP InfoNCE + α · balance loss (the paper's Switch form or the released code's Mixtral form,
padding masked). The same function trains sparse-upcycling baselines, where the experts learn too
(`trainable=EXPERT_AND_ROUTER_PATTERNS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ClipforgeError
from ..run import Run
from ..schedule import Schedule, TrainConfig, schedule
from ..train.loss import ClipLoss
from ..train.runs import train_run
from .balance import RouterStep
from .mcl import PAPER_SCHEDULE

ROUTER_PATTERNS = ["*.mlp.router.*"]
EXPERT_AND_ROUTER_PATTERNS = ["*.mlp.router.*", "*.mlp.experts.*"]


@dataclass
class RouterConfig:
    """Router-training settings; defaults are the released code's [C] except `steps` and where marked.

    `steps` None: one epoch of shuffled batches. With lr 1e-6 the routers barely move in short runs
    (docs/methods.md A.3): small-scale runs set a larger lr and say so.
    """

    schedule: Schedule = schedule(**PAPER_SCHEDULE, lr=1e-6, weight_decay=0.01)
    balance_loss: str = "switch"  # [choice] the paper's form; "mixtral" = the released code's
    alpha: float = 0.01
    trainable: list[str] = field(default_factory=lambda: list(ROUTER_PATTERNS))

    def __post_init__(self) -> None:
        if self.balance_loss not in ("switch", "mixtral"):
            raise ClipforgeError(f"balance_loss must be 'switch' or 'mixtral', got {self.balance_loss!r}")

    def train_config(self, num_samples: int) -> TrainConfig:
        s = self.schedule.resolved(num_samples)
        return s.train_config(trainable=list(self.trainable), keep_checkpoints=2)


def _brief(s: Schedule) -> dict[str, int]:
    return {"global_batch": s.batch_size, "steps": s.steps, "warmup": s.warmup}


def router_record(cfg: RouterConfig, num_samples: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a router-training run directory is claimed for."""
    return {"router": asdict(cfg), "num_samples": num_samples, **(settings or {})}


def train_routers(model: nn.Module, dataset: Any, run_dir: str | os.PathLike | Run, cfg: RouterConfig,
                  settings: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                  collate_fn: Callable | None = None, force: bool = False, progress: bool = True,
                  kind: str = "moe route", inputs: Iterable[Any] = ()) -> nn.Module:
    """Train `model`'s routers (or what `cfg.trainable` names) in `run_dir`; the result is `run_dir/model`.

    `run_dir`: a directory, or the `Run` of a method that holds this training (DMU). Resumable: a finished
    run with the same settings is loaded, an interrupted one resumes.
    """
    from .mcl import _default_collate

    if not hasattr(model, "moe_layers"):
        raise ClipforgeError(f"router training needs a CLIP-MoE, got {type(model).__name__}")
    model.config.balance_loss = cfg.balance_loss
    model.config.balance_alpha = cfg.alpha
    tcfg = cfg.train_config(len(dataset))
    step = RouterStep(ClipLoss(label_smoothing=cfg.schedule.label_smoothing), alpha=cfg.alpha, kind=cfg.balance_loss,
                      fallback_logit_scale=cfg.schedule.fixed_logit_scale or 100.0)
    record = router_record(cfg, len(dataset), settings)
    prov = {"source": "clipforge.moe.routers", "trainable": list(cfg.trainable),
            "schedule": _brief(cfg.schedule.resolved(len(dataset))), **(provenance or {})}
    return train_run(model, dataset, run_dir if isinstance(run_dir, Run) else Path(run_dir), tcfg, record, prov,
                     step_fn=step, collate_fn=collate_fn or _default_collate(model), force=force, progress=progress,
                     kind=kind, inputs=inputs)
