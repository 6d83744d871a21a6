"""Pre-train one family member: CLIP, vision-only or text-only, by InfoNCE or distillation from the ancestry.

`clipforge.learngene.pipeline.pretrain` gives one-tower descendants plain LiT-style training only; the
benchmark needs the same α / β objectives for every kind, so it builds the step itself (`step_for`) and
runs `clipforge.train.train` (resumable in the run directory, stopped early by a plateau rule when given).
FLOPs are the benchmark's accounting (`costs.flops_per_sample_trained`) times the samples seen.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from clipforge.cost import Timer
from clipforge.data.collate import Collator
from clipforge.learngene import Distill
from clipforge.learngene.distill import TowerStep
from clipforge.learngene.pipeline import TimedEval
from clipforge.models.preprocess import transform_for
from clipforge.schedule import Schedule
from clipforge.train.loop import train
from clipforge.train.runs import read_log

from .family import Member


def step_for(member: Member, objective: Distill | None, ancestry: nn.Module) -> Any:
    """The `step_fn` of a member's pre-training (None: `train()`'s own InfoNCE step for a CLIP)."""
    if member.kind == "clip":
        return objective.step(ancestry) if objective is not None else None
    d = objective or Distill(alpha=0.0)
    return TowerStep(ancestry, member.kind, alpha=d.alpha, beta=d.beta, tau=d.tau, feature=d.feature)


def pretrain_member(model: nn.Module, member: Member, data: Dataset, run_dir: Path, *, schedule: Schedule,
                    ancestry: nn.Module, objective: Distill | None, per_sample_flops: float,
                    eval_fn: Callable | None, eval_every: int, until: Callable | None = None) -> dict[str, Any]:
    """Train `model` in place; its record: steps done, whether the rule stopped it, FLOPs, wall times, curve."""
    context = ancestry.config.text_config.max_position_embeddings
    collate = Collator(transform_for(ancestry.config), context)
    sched = schedule.resolved(len(data))
    cfg = replace(sched, log_every=max(1, min(sched.log_every, sched.steps // 10))).train_config(
        eval_every=eval_every if eval_fn else 0, keep_checkpoints=1)
    timed = TimedEval(eval_fn) if eval_fn is not None else None
    with Timer() as t:
        train(model, data, cfg, run_dir, collate_fn=collate, step_fn=step_for(member, objective, ancestry),
              eval_fn=timed, until=until, resume="latest", progress=False)
    model.eval()
    log = read_log(run_dir / "log.jsonl")
    done = next((r["step"] for r in log if r.get("stopped")), sched.steps)
    curve = [[r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval/")}]
             for r in log if any(k.startswith("eval/") for k in r)]
    eval_s = timed.seconds if timed is not None else 0.0
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the model is saved by the caller: free the disk
    return {"steps": done, "step_budget": sched.steps, "stopped_early": done < sched.steps,
            "samples": done * sched.batch_size, "flops": done * sched.batch_size * per_sample_flops,
            "flops_per_sample": per_sample_flops, "objective": objective.to_dict() if objective else None,
            "lr": sched.lr, "warmup": sched.warmup, "batch_size": sched.batch_size,
            "wall_time_s": round(t.seconds - eval_s, 2), "eval_time_s": round(eval_s, 2), "curve": curve}
