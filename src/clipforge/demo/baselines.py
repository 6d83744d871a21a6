"""The demo's baselines: what each method's verdict is measured against, at the budget it says.

* **direct FT (full)** of the ancestry: the obvious alternative to growing a CLIP-MoE. Same data, same
  batch and learning rate as the MCL stages, as many steps as DMU trains in all (stages + routers): equal
  steps, the paper's Table 2 comparison (docs/methods.md A.6).
* **Scratch**: a randomly initialised CLIP of a descendant's shape, pre-trained contrastively for the same
  training FLOPs the MM-LG descendant cost: its share of the extraction (extraction FLOPs / family size)
  plus its own pre-training (the teacher's forward included), docs/methods.md B.6. Counting the
  extraction is what makes the comparison fair to Scratch: a learngene is not free.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cost import forward_flops
from ..schedule import Schedule


def direct_ft_baseline(ancestry_dir: Path, data: Any, out: Path, preset: Any, num_samples: int) -> Path:
    """Direct fine-tuning of every ancestry weight, at the MCL stages' schedule for DMU's total steps
    (T = (E − 1)·S + R, `moe.recipe.total_steps`: compute-matched)."""
    from ..moe.baselines import FinetuneConfig, direct_ft
    from ..moe.recipe import total_steps

    cfg = FinetuneConfig(schedule=replace(preset.mcl.schedule, steps=total_steps(preset, num_samples)),
                         params="full")
    direct_ft(str(ancestry_dir), data, out, cfg)
    return out / "model"


def descendant_flops(learngene_dir: Path, descendant_dir: Path, family_size: int) -> dict[str, float]:
    """Training FLOPs one descendant cost: its share of the extraction and its own pre-training."""
    from ..models.io import read_provenance

    lg = json.loads((learngene_dir / "learngene.json").read_text())["provenance"]
    pre = read_provenance(descendant_dir).get("pretrain") or {}
    share = float(lg["flops"]["total"]) / family_size
    own = float(pre.get("train_flops", 0.0))
    return {"extraction_share": share, "pretrain": own, "total": share + own,
            "caption_tokens_per_sample": float(pre.get("caption_tokens_per_sample", 16.0))}


def scratch_steps(config: Any, flops: float, tokens: float, batch_size: int) -> int:
    """Whole InfoNCE steps of a CLIP of `config` that `flops` buys (3× forward per sample, no teacher)."""
    per_step = batch_size * 3 * forward_flops(config, "clip", tokens)
    return max(1, int(flops // per_step))


def scratch_baseline(descendant_dir: Path, budget: dict[str, float], data: Any, out: Path,
                     schedule: Schedule, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """A random CLIP of the descendant's shape, pre-trained for `budget["total"]` FLOPs; (model dir, record).

    Skipped when `out/model` was already made with the same settings (the run-directory protocol)."""
    from ..learngene.pipeline import open_data, pretrain
    from ..models.io import load, read_provenance, save
    from ..models.registry import build
    from ..run import Run

    config = load(descendant_dir).config
    steps = scratch_steps(config, budget["total"], budget["caption_tokens_per_sample"], schedule.batch_size)
    sched = replace(schedule, steps=steps, warmup=max(1, steps // 10), seed=seed)
    settings = {"shape_of": str(Path(descendant_dir).resolve()), "flops_budget": budget, "steps": steps,
                "lr": sched.lr, "batch_size": sched.batch_size, "seed": seed}
    with Run(out, "demo scratch", settings, inputs=[descendant_dir]) as run:
        if not run.done:
            model = build(config, seed=seed)
            dataset, _ = open_data(data, int(config.vision_config.image_size))
            pre = pretrain(model, dataset, run.dir / "run", training=sched)
            save(model.cpu(), run.artefact_path, provenance={"source": "clipforge.demo.baselines", "name": "Scratch",
                                                             "settings": settings, "pretrain": pre})
            run.finish(cleanup=[run.dir / "run" / "checkpoints"])
    return run.artefact_path, read_provenance(run.artefact_path)["pretrain"]
