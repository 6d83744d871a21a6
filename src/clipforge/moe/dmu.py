"""Diversified Multiplet Upcycling end to end: MCL stages → pack → routers → evaluation.

`dmu(base, dataset, out, cfg)` runs every phase and can be interrupted anywhere: rerun it with the
same arguments and finished phases are skipped, an interrupted training resumes from its last
checkpoint (bit-exact on the CPU), so it ends with the same model. On disk (`out`):

    settings.json        what decides the result (a rerun with other settings is refused)
    mcl/                 the MCL stages (see `clipforge.moe.mcl`): stage{j}/model is expert j (removed
                         once the run has finished: `pack.expert_model` rebuilds it from model/)
    packed/              the CLIP-MoE as packed, routers freshly drawn (removed once finished)
    log.jsonl, checkpoints/   router training
    model/               the final CLIP-MoE (loads with `clipforge.load` or `AutoModel`)
    dmu.json             the manifest: phases, their wall time, where everything is
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as D
from ..data.base import identity
from ..errors import ClipforgeError
from ..files import write_json
from ..models import io
from ..run import SETTINGS as SETTINGS_FILE
from ..run import Run, normalise
from .mcl import MCLConfig, _identity, run_stages
from .pack import pack
from .routers import RouterConfig, router_record, train_routers

log = logging.getLogger("clipforge.moe")


@dataclass
class DMUConfig:
    """Everything DMU does: the MCL stages, the MoE's shape, router training."""

    mcl: MCLConfig = field(default_factory=MCLConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    top_k: int = 2
    moe_layers_vision: list[int] | None = None  # None: every block
    moe_layers_text: list[int] | None = None
    expert_dropout: float = 0.1  # [C]

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.mcl.num_experts:
            raise ClipforgeError(f"top_k must lie in [1, num_experts={self.mcl.num_experts}], got {self.top_k}")

    def moe_config(self) -> dict[str, Any]:
        return {"moe_layers_vision": self.moe_layers_vision, "moe_layers_text": self.moe_layers_text,
                "expert_dropout": self.expert_dropout, "balance_loss": self.router.balance_loss,
                "balance_alpha": self.router.alpha}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _phase(manifest: dict[str, Any], name: str, started: float, **info: Any) -> None:
    manifest["phases"][name] = {"wall_time_s": round(time.perf_counter() - started, 2), **info}


def pack_stages(expert_dirs: list[Path], out: Path, cfg: DMUConfig) -> nn.Module:
    """Pack the stage models into `out` (skipped if already there); returns the packed CLIP-MoE."""
    if (out / "config.json").is_file():
        return io.load(out)
    model = pack([str(d) for d in expert_dirs], top_k=cfg.top_k, seed=cfg.router.schedule.seed, **cfg.moe_config())
    if D.rank() == 0:
        io.save(model, out, provenance={"source": "clipforge.moe.dmu", "name": "CLIP-MoE (packed, routers untrained)",
                                        "experts": [str(d) for d in expert_dirs], "top_k": cfg.top_k})
    D.barrier()
    return model


def dmu(base: nn.Module | str | os.PathLike, dataset: Any, out: str | os.PathLike, cfg: DMUConfig | None = None,
        *, collate_fn: Callable | None = None, force: bool = False, progress: bool = True,
        keep_stages: bool = False) -> Path:
    """Run DMU from `base` (a dense CLIP or its directory) on `dataset`; returns `out/model`.

    Rerun to resume; `force` starts over. Once finished the run keeps the CLIP-MoE only: `packed/` and,
    when every block is an MoE block, the stage models go (expert e of the CLIP-MoE is stage e's FFNs,
    `pack.expert_model` rebuilds the stage model), unless `keep_stages`. What it gains is measured
    afterwards, once every rank is done (`clipforge.report.moe_run.evaluate_moe_run`; `clipforge moe dmu`
    does it unless `--no-eval`).
    """
    cfg = cfg or DMUConfig()
    out = Path(out)
    if isinstance(base, (str, os.PathLike)) and not (Path(base) / "config.json").is_file():
        raise ClipforgeError(f"--base {base}: not a model directory (no config.json)")
    settings = {"method": "dmu", "base": _identity(base),
                "dataset": identity(dataset), "dmu": cfg.to_dict()}
    record = router_record(cfg.router, len(dataset), settings)
    _check_disk(base, out, cfg, keep_stages)
    D.init_distributed()  # under torchrun: join the group before any rank-0-only write
    inputs = [] if isinstance(base, nn.Module) else [base]
    with Run(out, "moe dmu", record, overwrite=force, inputs=inputs) as run:
        if run.done:
            print(run.skip_message())
            return out / "model"
        _phases(run, base, dataset, cfg, settings, collate_fn, progress)
        run.finish(cleanup=[] if keep_stages else redundant_copies(out, cfg))
    return out / "model"


def disk_need(base_config: Any, cfg: DMUConfig, keep_stages: bool = False) -> dict[str, int]:
    """Bytes a DMU run writes (fp32): at its peak (router training: the base copy and the stage models,
    packed/, a checkpoint and model/) and at the end (model/, plus the stage models with `keep_stages`)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        dense = CLIPModel(base_config)
    params = sum(p.numel() for p in dense.parameters())
    ffn = sum(p.numel() for n, p in dense.named_parameters() if ".mlp." in n)
    experts = cfg.mcl.num_experts
    moe = params + (experts - 1) * ffn
    stage_checkpoints = cfg.mcl.keep_checkpoints * (params + 2 * ffn)  # weights + AdamW's two moments
    peak = max((experts - 1) * params + stage_checkpoints, experts * params + 3 * moe)
    end = moe + (experts * params if keep_stages else 0)
    return {"peak": 4 * peak, "end": 4 * end, "model": 4 * moe}


def _check_disk(base: Any, out: Path, cfg: DMUConfig, keep_stages: bool) -> None:
    """Print what the run will need on disk and refuse, in one line, when the free space is short of it."""
    import shutil

    from transformers import CLIPConfig

    base_config = base.config if isinstance(base, nn.Module) else CLIPConfig.from_pretrained(base)
    need = disk_need(base_config, cfg, keep_stages)
    where = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(where).free
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    if D.rank() == 0:
        print(f"[dmu] disk: about {gb(need['peak'])} at the peak, {gb(need['end'])} once finished "
              f"(the CLIP-MoE: {gb(need['model'])}); {gb(free)} free under {where}")
    if free < need["peak"] and not (out / SETTINGS_FILE).is_file():  # a resumed run has written part already
        raise ClipforgeError(f"--out {out}: {gb(free)} free, the run needs about {gb(need['peak'])} at its peak; "
                             "free some space or choose another --out")


def stage_model(kept: str | os.PathLike, moe: nn.Module, j: int) -> nn.Module:
    """MCL stage j's dense model: its directory `kept` (`OUT/mcl/stage{j}/model`) when the run kept it, else
    rebuilt from the run's CLIP-MoE `moe` (`pack.expert_model`)."""
    from .pack import expert_model

    if (Path(kept) / "config.json").is_file():
        return io.load(kept).to(next(moe.parameters()).device)
    return expert_model(moe, j)


def redundant_copies(out: Path, cfg: DMUConfig) -> list[Path]:
    """What a finished run holds twice: `packed/` (the model before router training; `model/` has every
    tensor of it but the routers) and the stage models, when `pack.expert_model` rebuilds them exactly
    (every block an MoE block, one text position table)."""
    copies = [out / "packed"]
    model_cfg = out / "model" / "config.json"
    every_block = cfg.moe_layers_vision is None and cfg.moe_layers_text is None
    if every_block and model_cfg.is_file() and json.loads(model_cfg.read_text()).get("text_position_split") is None:
        copies += [out / "mcl" / f"stage{j}" / "model" for j in range(cfg.mcl.num_experts)]
    return copies


def _phases(run: Run, base: Any, dataset: Any, cfg: DMUConfig, settings: dict[str, Any],
            collate_fn: Callable | None, progress: bool) -> None:
    """MCL stages, packing and router training inside `run` (each skipped when done)."""
    out = run.dir
    manifest: dict[str, Any] = {"settings": normalise(settings), "phases": {}}
    old = out / "dmu.json"
    if old.is_file():
        manifest["phases"] = json.loads(old.read_text()).get("phases", {})

    t = time.perf_counter()
    expert_dirs = run_stages(base, dataset, cfg.mcl, out / "mcl", collate_fn=collate_fn, progress=progress)
    _phase(manifest, "mcl_stages", t, experts=[str(d) for d in expert_dirs])

    t = time.perf_counter()
    packed = pack_stages(expert_dirs, out / "packed", cfg)
    _phase(manifest, "pack", t, model=str(out / "packed"))

    t = time.perf_counter()
    train_routers(packed, dataset, run, cfg.router, settings,
                          {"name": "CLIP-MoE (DMU)", "method": "Diversified Multiplet Upcycling",
                           "experts": [str(d) for d in expert_dirs]}, collate_fn=collate_fn, progress=progress)
    _phase(manifest, "routers", t, model=str(out / "model"))
    if D.rank() == 0:
        write_json(out / "dmu.json", manifest)

    D.barrier()
