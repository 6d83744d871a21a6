"""The baselines CLIP-MoE is compared with (docs/methods.md A.4), on the same data with the same steps.

* `direct_ft`: fine-tune the base on ordinary shuffled batches, FFN-only or full.
* `sparse_upcycling`: E copies of the base FFN as experts, new routers; experts + routers trained
  (Komatsuzaki et al. 2023).
* `without_mcl`: the paper's "w/o MCL" ablation: a 2-expert MoE of the base FFN and one directly
  fine-tuned FFN, routers trained.
* `without_mcl_config`: an E-expert "w/o MCL" made by DMU itself with one cluster per stage (each stage
  plain FFN fine-tuning on shuffled batches of the same data), everything else as the CLIP-MoE's.

Each writes a resumable run directory whose `model/` is the result.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ClipforgeError
from ..models import io
from ..schedule import Schedule, TrainConfig, schedule
from ..train.runs import train_run
from .mcl import (
    ATTENTION_PATTERNS,
    FFN_PATTERNS,
    PAPER_SCHEDULE,
    _default_collate,
    _identity,
)
from .pack import pack, upcycle
from .routers import EXPERT_AND_ROUTER_PATTERNS, RouterConfig, train_routers

# The text tower's token and position tables: what an FFN-only method cannot move (the diagnostic of which
# channel full fine-tuning's gain comes through, benchmarks/clipmoe).
TEXT_EMBEDDING_PATTERNS = ["text_model.embeddings.*"]
# `FinetuneConfig.params` → the parameter patterns it trains (None: everything)
PARAMS: dict[str, list[str] | None] = {
    "ffn": FFN_PATTERNS,
    "ffn+attention": FFN_PATTERNS + ATTENTION_PATTERNS,
    "ffn+text_embeddings": FFN_PATTERNS + TEXT_EMBEDDING_PATTERNS,
    "text_embeddings": TEXT_EMBEDDING_PATTERNS,
    "full": None,
}


@dataclass
class FinetuneConfig:
    """Plain fine-tuning settings (shuffled batches); `params`: one of `PARAMS` ("ffn", "full", ...).

    `schedule.steps` None: one epoch of the pool (`moe.sizing.epoch_steps`)."""

    schedule: Schedule = schedule(**{**PAPER_SCHEDULE, "steps": 1000}, lr=1e-5, weight_decay=0.2)
    params: str = "ffn"

    def __post_init__(self) -> None:
        if self.params not in PARAMS:
            raise ClipforgeError(f"params must be one of {', '.join(map(repr, PARAMS))}, got {self.params!r}")

    def trainable(self) -> list[str] | None:
        found = PARAMS[self.params]
        return None if found is None else list(found)

    def train_config(self, num_samples: int) -> TrainConfig:
        s = self.schedule.resolved(num_samples)
        return s.train_config(trainable=self.trainable(), keep_checkpoints=2)


def _load(model_or_dir: nn.Module | str | os.PathLike) -> nn.Module:
    if isinstance(model_or_dir, nn.Module):
        return copy.deepcopy(model_or_dir)  # never train a caller's model in place
    return io.load(model_or_dir)


def _paths(*models: Any) -> list[Any]:
    """The inputs a run must not write over: the models given as directories."""
    return [m for m in models if not isinstance(m, nn.Module)]


def direct_ft(base: nn.Module | str | os.PathLike, dataset: Any, run_dir: str | os.PathLike, cfg: FinetuneConfig,
              collate_fn: Callable | None = None, force: bool = False, progress: bool = True) -> nn.Module:
    """Direct fine-tuning of the base on `dataset` (shuffled batches); the result is `run_dir/model`."""
    model = _load(base)
    settings = {"method": "direct_ft", "base": _identity(base), "num_samples": len(dataset), "config": asdict(cfg)}
    prov = {"source": "clipforge.moe.baselines", "name": f"direct FT ({cfg.params})", "base": _identity(base)}
    return train_run(model, dataset, Path(run_dir), cfg.train_config(len(dataset)), settings, prov,
                     collate_fn=collate_fn or _default_collate(model), force=force, progress=progress,
                     kind="moe baseline", inputs=_paths(base))


def sparse_upcycling(base: nn.Module | str | os.PathLike, dataset: Any, run_dir: str | os.PathLike,
                     cfg: RouterConfig, num_experts: int = 4, top_k: int = 2, collate_fn: Callable | None = None,
                     force: bool = False, progress: bool = True, **moe_config: Any) -> nn.Module:
    """E copies of the base FFN + new routers, experts and routers trained with `cfg` (its `trainable`
    is replaced by experts + routers)."""
    cfg = copy.deepcopy(cfg)
    cfg.trainable = list(EXPERT_AND_ROUTER_PATTERNS)
    model = upcycle(_load(base), num_experts=num_experts, top_k=top_k, seed=cfg.schedule.seed, **moe_config)
    settings = {"method": "sparse_upcycling", "base": _identity(base), "num_experts": num_experts, "top_k": top_k,
                "moe_config": moe_config}
    prov = {"name": f"sparse upcycling ({num_experts} experts, top-{top_k})", "base": _identity(base)}
    return train_routers(model, dataset, run_dir, cfg, settings, prov, collate_fn, force, progress,
                         kind="moe baseline", inputs=_paths(base))


def without_mcl(base: nn.Module | str | os.PathLike, finetuned: nn.Module | str | os.PathLike, dataset: Any,
                run_dir: str | os.PathLike, cfg: RouterConfig, top_k: int = 2, collate_fn: Callable | None = None,
                force: bool = False, progress: bool = True, **moe_config: Any) -> nn.Module:
    """The "w/o MCL" ablation: pack [base, direct-FT model] into a 2-expert MoE, train the routers."""
    model = pack([_load(base), _load(finetuned)], top_k=min(top_k, 2), seed=cfg.schedule.seed,
                 expert_sources=[_identity(base), _identity(finetuned)], **moe_config)
    settings = {"method": "without_mcl", "base": _identity(base), "finetuned": _identity(finetuned),
                "top_k": min(top_k, 2), "moe_config": moe_config}
    prov = {"name": "w/o MCL (base + direct-FT experts)", "base": _identity(base)}
    return train_routers(model, dataset, run_dir, cfg, settings, prov, collate_fn, force, progress,
                         kind="moe baseline", inputs=_paths(base, finetuned))


def without_mcl_config(cfg: Any) -> Any:
    """`cfg` (a `DMUConfig`) with one cluster per stage: `dmu` with it is the same pipeline (stages of one
    epoch, packing, routers) without MCL's cluster-pure batches."""
    from dataclasses import replace

    return replace(cfg, mcl=replace(cfg.mcl, k_img=1, k_txt=1))
