"""The epoch recipe: DMU sized by its pool, as benchmarks/clipmoe's protocol v2 runs it (docs/methods.md A.4).

Every MCL stage is one epoch of its cluster sampler (the paper: one epoch per stage), the routers train one
epoch of the pool, and the clusters per stage come from `sizing.size_clusters`, so the last stage's
accumulated clusters hold about two global batches each (the released run's ratio). The learning rates are
the ones the benchmark uses for a small CLIP; the warm-up is a tenth of an epoch.

`base_scale`: the stages and routers keep the base's learned temperature (`mcl.base_logit_scale`) instead
of the released fixed 100. On the demo ancestry (which learned about 14) the benchmark measured +0.9 ± 0.3
points of dense T→I R@1 for it over the released 100 (benchmarks/clipmoe/results/results.md), so it is
this recipe's default.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .dmu import DMUConfig
from .mcl import MCLConfig, base_logit_scale, paper_schedule
from .routers import RouterConfig
from .sizing import epoch_steps, size_clusters


def epoch_recipe(base: nn.Module | str | os.PathLike, num_samples: int, batch: int, *, experts: int = 4,
                 top_k: int = 2, stage_lr: float = 1e-4, router_lr: float = 2e-3, seed: int = 0,
                 base_scale: bool = True, target_batches: float = 2.0, policy: str = "keep_remainder",
                 cluster_order: str = "fixed", kmeans_niter: int = 50, embed_batch_size: int = 256,
                 **schedule_changes: Any) -> DMUConfig:
    """DMU settings for `num_samples` training pairs at global batch `batch`, growing `base` (the model or
    its directory: read for its logit scale when `base_scale`)."""
    clusters = size_clusters(num_samples, batch, experts - 1, target_batches)
    warmup = max(1, epoch_steps(num_samples, batch) // 10)
    scale = {"fixed_logit_scale": base_logit_scale(base)} if base_scale else {}

    def sched(lr: float, **kw: Any) -> Any:
        return paper_schedule(steps=None, lr=lr, batch_size=batch, warmup=warmup, seed=seed,
                              **{**scale, **kw, **schedule_changes})

    return DMUConfig(mcl=MCLConfig(num_experts=experts, k_img=clusters.k_img, k_txt=clusters.k_txt, policy=policy,
                                   cluster_order=cluster_order, embed_batch_size=embed_batch_size,
                                   kmeans_niter=kmeans_niter, schedule=sched(stage_lr)),
                     router=RouterConfig(schedule=sched(router_lr, weight_decay=0.01)), top_k=top_k)


def total_steps(cfg: DMUConfig, num_samples: int) -> int:
    """T = (E − 1)·S + R for an epoch recipe (stages and routers of one epoch), else the steps it sets:
    what a compute-matched baseline trains."""
    epoch = epoch_steps(num_samples, cfg.mcl.schedule.batch_size)
    stage = cfg.mcl.schedule.steps or epoch
    router = cfg.router.schedule.steps or epoch
    return (cfg.mcl.num_experts - 1) * stage + router
